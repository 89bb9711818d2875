"""``load_agent`` on hostile or damaged files: every failure is a ``CheckpointError`` that names the file and
the problem (never torch's advice to load with ``weights_only=False``), sizes are checked before any module is
allocated, and weights must be finite floating-point numbers of plausible size whose agent gives finite outputs.
None of these tests needs a real checkpoint except the bit-flip test (baby-a3c pong@40, through the registry)."""

import io
import os
import pickle
import pickletools
import random
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from engine import CheckpointError, load_agent
from engine.policies import checkpoint as policy
from engine.policies.greydanus2017 import ActorCritic
from tests.conftest import checkpoint


def _refused(path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        load_agent(path, device="cpu")
    message = str(info.value)
    assert str(path) in message, message  # names the file
    assert "weights_only" not in message, message  # and never suggests loading untrusted pickles
    return message


def _agent_state_dict(core="gru", num_actions=6, seed=0):
    torch.manual_seed(seed)
    return ActorCritic(num_actions=num_actions, core=core).state_dict()


def _save(tmp_path, obj, name="bad.pt", **kwargs):
    path = tmp_path / name
    torch.save(obj, path, **kwargs)
    return path


def test_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    _refused(text, r"not a torch checkpoint: it is a text file \(it starts with 'root:x:0:0")
    if Path("/etc/passwd").is_file():
        _refused("/etc/passwd", "not a torch checkpoint: it is a text file")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _refused(empty, r"not a torch checkpoint: the file is empty \(0 bytes\)")
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps({"conv1.weight": [1.0, 2.0]}))
    _refused(plain_pickle, "not a torch checkpoint: it starts with the bytes 80 04")
    foreign_zip = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    _refused(foreign_zip, "a zip archive without torch.save's data.pkl")
    _refused(tmp_path, "does not exist \\(or is not a file\\)")


def test_random_bytes(tmp_path):
    rng = random.Random(0)
    legacy_head = io.BytesIO()
    torch.save({}, legacy_head, _use_new_zipfile_serialization=False)
    for i in range(60):
        data = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100, 5000])))
        if i % 3 == 1:  # looks like a legacy torch file for its first bytes, so torch's own parser meets the noise
            data = legacy_head.getvalue()[:30] + data
        elif i % 3 == 2:  # looks like a zip archive
            data = b"PK\x03\x04" + data
        path = tmp_path / f"random_{i}.pt"
        path.write_bytes(data)
        _refused(path, "not a torch checkpoint")


def test_truncated_files(tmp_path):
    for name, kwargs in (("legacy.pt", dict(_use_new_zipfile_serialization=False)), ("zip.pt", {})):
        whole = _save(tmp_path, _agent_state_dict(), name, **kwargs).read_bytes()
        for keep in (10, 200, len(whole) // 2, len(whole) - 1):
            path = tmp_path / f"cut_{keep}_{name}"
            path.write_bytes(whole[:keep])
            _refused(path, "not a torch checkpoint")


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "code_ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = _save(tmp_path, {**_agent_state_dict(), "extra": RunsCode()})
    _refused(
        path,
        r"holds Python objects other than tensors and plain containers \(UnpicklingError: Unsupported global: GLOBAL [^ ]*open",
    )
    assert not marker.exists()


def test_a_call_into_a_blocked_module_is_refused_as_code_not_as_damage(tmp_path):
    """torch words the refusal of a blocked module ("unsupported GLOBAL posix.system ... is blocked") unlike that of
    a class it does not know: both are a file that would run code, not a damaged one."""
    marker = tmp_path / "code_ran"

    class RunsShell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = _save(tmp_path, {**_agent_state_dict(), "extra": RunsShell()})
    message = _refused(path, r"holds Python objects other than tensors and plain containers .*GLOBAL .*system")
    assert "damaged or truncated" not in message
    assert not marker.exists()


def _pickled_structure_end(data: bytes) -> int:
    """Where a legacy torch.save file's pickles end (magic number, protocol, system info, the state dict, the
    storage keys) and the raw storages begin; pickletools only reads the opcodes, it runs nothing."""
    f = io.BytesIO(data)
    for _ in range(5):
        for _ in pickletools.genops(f):
            pass
    return f.tell()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # a flipped PROTO byte that still loads
def test_bit_flipped_copies_of_a_real_checkpoint(tmp_path):
    """250 copies of a real baby-a3c checkpoint, one random bit flipped in each (seeded): four in five in its
    pickled structure (names, storage keys, sizes, strides) or the first storage's size header, the rest
    anywhere. Each one loads into a working agent or raises CheckpointError, nothing else."""
    original = checkpoint("pong").read_bytes()
    structure = _pickled_structure_end(original) + 8
    assert 1000 < structure < 4000
    rng = random.Random(2017)
    x = torch.rand(1, 1, 80, 80, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "flipped.tar"
    path.write_bytes(original)
    outcomes = {"loaded": 0, "refused": 0}
    for copy in range(250):
        position = rng.randrange(structure) if copy % 5 else rng.randrange(len(original))
        flipped = original[position] ^ (1 << rng.randrange(8))
        with open(path, "r+b") as f:  # the copy: the original with that one byte changed
            f.seek(position)
            f.write(bytes([flipped]))
        try:
            agent = load_agent(path, device="cpu")
        except CheckpointError as exc:
            assert str(path) in str(exc) and "weights_only" not in str(exc), str(exc)
            outcomes["refused"] += 1
        else:  # any other exception type fails the test
            with torch.inference_mode():
                out = agent(x, agent.initial_state(1))
            assert out.logits.shape == (1, agent.num_actions) and torch.isfinite(out.logits).all(), position
            assert torch.isfinite(out.value).all(), position
            outcomes["loaded"] += 1
        with open(path, "r+b") as f:
            f.seek(position)
            f.write(original[position : position + 1])
    assert outcomes["refused"] > 150 and outcomes["loaded"] > 40, outcomes  # both paths were exercised


def test_sizes_are_checked_before_allocation(tmp_path, monkeypatch):
    """A 3.4 MB file whose stride-0 tensors claim 10^9 actions (1 TB of weights) is refused from its shapes."""
    built = []
    real_init = ActorCritic.__init__

    def watch(self, num_actions, *args, **kwargs):
        built.append(num_actions)
        real_init(self, num_actions, *args, **kwargs)

    sd = _agent_state_dict()
    monkeypatch.setattr(ActorCritic, "__init__", watch)
    huge = {
        **sd,
        "actor_linear.weight": torch.zeros(1, 256).expand(10**9, 256),
        "actor_linear.bias": torch.zeros(1).expand(10**9),
    }
    path = _save(tmp_path, huge, "huge_actions.pt")
    assert path.stat().st_size < 4_000_000
    _refused(path, r"actor_linear.weight \(1000000000, 256\) implies 1000000000 actions, outside 1..1024")
    hidden = {**sd, "gru.weight_hh": torch.zeros(768, 1).expand(768, 10**7)}
    _refused(_save(tmp_path, hidden, "huge_hidden.pt"), r"implies 10000000 hidden units, outside 1..4096")
    channels = {**sd, "conv1.weight": torch.zeros(32, 1, 3, 3).expand(32, 10**6, 3, 3)}
    _refused(_save(tmp_path, channels, "huge_channels.pt"), r"implies 1000000 input channels, outside 1..64")
    assert built == []  # refused from the shapes alone: no module was built, not even on the meta device
    # within bounds, but a stride-0 view is not stored weights
    expanded = {**sd, "actor_linear.weight": torch.zeros(1, 256).expand(6, 256)}
    _refused(
        _save(tmp_path, expanded, "expanded.pt"),
        r"actor_linear.weight \(6, 256\) has 1536 values but only 256 are stored",
    )
    # sizes that disagree with each other: 6 actions, but a head of width 128 for a 256-wide core
    narrow = {**sd, "actor_linear.weight": torch.zeros(6, 128)}
    _refused(_save(tmp_path, narrow, "narrow.pt"), r"actor_linear.weight: \(6, 128\) \(expected \(6, 256\)\)")
    flat = {**sd, "gru.weight_hh": torch.zeros(768)}
    _refused(_save(tmp_path, flat, "flat.pt"), r"gru.weight_hh has shape \(768,\), expected 2 dimensions")


def test_weights_must_be_finite_floats_of_plausible_size(tmp_path, monkeypatch):
    sd = _agent_state_dict(core="lstm")
    for bad_value in (float("nan"), float("inf"), float("-inf")):
        weights = {k: v.clone() for k, v in sd.items()}
        weights["conv2.weight"][3, 1, 0, 2] = bad_value
        weights["lstm.bias_hh"][:5] = bad_value
        _refused(
            _save(tmp_path, weights),
            r"non-finite \(NaN or inf\) weights in conv2.weight \(1 of 9216\), lstm.bias_hh \(5 of 1024\)",
        )
    for dtype in (torch.int64, torch.bool, torch.complex64):
        _refused(
            _save(tmp_path, {**sd, "conv1.bias": torch.zeros(32, dtype=dtype)}),
            f"conv1.bias has dtype {dtype}; an agent's weights are floating point",
        )
    # finite but absurd: a flipped top exponent bit makes 3.4e36 of 0.01 (the largest published weight is 296)
    huge = {k: v.clone() for k, v in sd.items()}
    huge["lstm.weight_ih"][7, 11] = 0.01 * 2.0**128
    _refused(_save(tmp_path, huge), r"\|w\| > 1e\+06\) in lstm.weight_ih \(max \|w\| 3.4e\+36\): the file is corrupt")
    # and should anything pass these checks yet overflow, a test step of the agent catches it
    monkeypatch.setattr(policy, "MAX_ABS_WEIGHT", float("inf"))
    _refused(
        _save(tmp_path, {**sd, "conv1.weight": torch.full((32, 1, 3, 3), 3e38)}),
        r"outputs on a test observation \(a black and a white frame\) are not finite: NaN or inf in the value, "
        r"logits, state 0, state 1 \(its weights are finite but overflow through the layers\)",
    )
    # other floating dtypes load (and are cast to the requested dtype)
    agent = load_agent(_save(tmp_path, {k: v.half() for k, v in sd.items()}, "half.pt"), device="cpu")
    assert agent.actor_linear.weight.dtype == torch.float32


def test_error_text_never_quotes_torch_advice():
    exc = pickle.UnpicklingError(
        "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument in "
        "`torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will likely "
        "succeed, but it can result in arbitrary code execution. Do it only if you got the file from a trusted "
        "source.\nPlease file an issue with the following so that we can make `weights_only=True` compatible with "
        "your use case: WeightsUnpickler error: \n\nUnsupported operand 108\n\nCheck the documentation of torch.load"
    )
    assert policy.torch_reason(exc) == "UnpicklingError: Unsupported operand 108"


# --- small files that would take huge work: refused from the zip directory and the tensors' shapes -------------


def _repack(src: Path, dst: Path, edit=lambda name, content: content, compression=zipfile.ZIP_STORED) -> Path:
    """Copy the torch zip ``src`` to ``dst`` record by record, ``edit(name, bytes) -> bytes`` applied to each."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w", compression) as out:
        for info in archive.infolist():
            out.writestr(info.filename, edit(info.filename, archive.read(info.filename)))
    return dst


def _write_deflated_zeros(archive: zipfile.ZipFile, name: str, head: bytes, zeros: int) -> None:
    """A record of ``head`` then ``zeros`` zero bytes, deflated as it is written (the test never holds it whole)."""
    chunk, info = bytes(1 << 20), zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as f:
        f.write(head)
        for _ in range(zeros // len(chunk)):
            f.write(chunk)


@pytest.fixture
def torch_load_calls(monkeypatch):
    """The map_location of every torch.load call, to show what was read before a refusal."""
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(str(kwargs.get("map_location")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_a_pickle_record_that_inflates_is_refused_unread(tmp_path, torch_load_calls):
    """data.pkl padded with 64 MiB of zeros after its STOP opcode (a 6 MB file whose data.pkl inflates to 4 GiB,
    in small): torch would inflate it whole and then load the agent; the zip directory refuses it unread."""
    good = _save(tmp_path, _agent_state_dict(), "good.pt")
    path = tmp_path / "inflating.pt"
    with zipfile.ZipFile(good) as archive, zipfile.ZipFile(path, "w") as out:
        for info in archive.infolist():
            if info.filename.endswith("/data.pkl"):
                _write_deflated_zeros(out, info.filename, archive.read(info.filename), 64 << 20)
            else:
                out.writestr(info.filename, archive.read(info.filename))
    assert path.stat().st_size < good.stat().st_size + 200_000
    _refused(path, r"data.pkl' declares 67\d{6} bytes.*at most 4194304.*refused without reading it")
    assert torch_load_calls == []


def test_records_that_inflate_or_outgrow_their_tensors_are_refused_unread(tmp_path, torch_load_calls):
    # a storage record of 32 MiB of zeros, deflated to 32 KB: refused from the directory's sizes
    zeros = _save(tmp_path, {"actor_linear.weight": torch.zeros(8 << 20)}, "zeros.pt")
    deflated = _repack(zeros, tmp_path / "deflated.pt", compression=zipfile.ZIP_DEFLATED)
    assert deflated.stat().st_size < 1_000_000
    _refused(deflated, r"would inflate from \d+ to 33554432 bytes \(\d+:1, .*refused without inflating it")
    assert torch_load_calls == []
    # a 4 MB storage of which the state dict uses 1536 values: refused from the tensors' shapes, nothing read
    sd = _agent_state_dict()
    sd["actor_linear.weight"] = torch.randn(10**6)[:1536].view(6, 256)
    _refused(_save(tmp_path, sd, "slice.pt"), r"storages hold 7\d{6} bytes of which its tensors use 3\d{6}")
    assert torch_load_calls == ["meta"]  # the shapes were read, no storage was
    # the same agent in a deflated copy of an honest file still loads
    honest = _repack(
        _save(tmp_path, _agent_state_dict(), "honest.pt"),
        tmp_path / "honest_deflated.pt",
        compression=zipfile.ZIP_DEFLATED,
    )
    assert isinstance(load_agent(honest, device="cpu"), ActorCritic)


def _with_directory_records(path: Path, records: list[bytes]) -> None:
    """Append ``records`` (raw central-directory records) to the zip directory of ``path``, as a zip bomb does."""
    raw = path.read_bytes()
    end = raw.rfind(b"PK\x05\x06")
    fields = list(struct.unpack("<4s4H2LH", raw[end : end + 22]))
    directory = raw[fields[6] : fields[6] + fields[5]] + b"".join(records)
    fields[3] += len(records)
    fields[4] += len(records)
    fields[5] = len(directory)
    path.write_bytes(raw[: fields[6]] + directory + struct.pack("<4s4H2LH", *fields))


def _directory_records(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    fields = struct.unpack("<4s4H2LH", raw[raw.rfind(b"PK\x05\x06") :][:22])
    directory = raw[fields[6] : fields[6] + fields[5]]
    return [b"PK\x01\x02" + r for r in directory.split(b"PK\x01\x02")[1:]]


def test_a_directory_that_reads_one_record_many_times_is_refused_unread(tmp_path, torch_load_calls):
    """A zip bomb without a large ratio: its directory lists one deflated record many times (each listing inflates
    it once more), or entries that share compressed bytes; each record alone is under the inflation bound."""
    good = _save(tmp_path, _agent_state_dict(), "good.pt")
    weights = next(r for r in _directory_records(good) if b"/data/" in r)
    twice = tmp_path / "listed_twice.pt"
    twice.write_bytes(good.read_bytes())
    _with_directory_records(twice, [weights] * 40)
    _refused(twice, r"lists the entry '[^']*/data/\d+' 41 times.*refused without inflating it")
    # the same record under another name: two entries whose compressed bytes are the same bytes
    shared = tmp_path / "shared.pt"
    shared.write_bytes(good.read_bytes())
    length = struct.unpack("<H", weights[28:30])[0]
    other = weights[46 : 46 + length] + b"_copy"
    _with_directory_records(
        shared, [weights[:28] + struct.pack("<H", len(other)) + weights[30:46] + other + weights[46 + length :]]
    )
    _refused(shared, r"entries '[^']*' and '[^']*' share compressed bytes.*refused without inflating them")
    assert torch_load_calls == []


def test_records_that_together_inflate_too_far_are_refused_unread(tmp_path, torch_load_calls):
    """64 extra records of 1 MiB of zeros, each deflated to about 1 KB: the per-record bound spares each (a small
    record costs little), but together they inflate to 64 MiB from a 3 MB file."""
    good = _save(tmp_path, _agent_state_dict(), "good.pt")
    path = tmp_path / "many_small_bombs.pt"
    with zipfile.ZipFile(good) as archive, zipfile.ZipFile(path, "w") as out:
        prefix = archive.namelist()[0].split("/")[0]
        for info in archive.infolist():
            out.writestr(info.filename, archive.read(info.filename))
        for k in range(64):
            _write_deflated_zeros(out, f"{prefix}/data/extra{k}", b"", 1 << 20)
    assert path.stat().st_size < good.stat().st_size + 100_000
    _refused(path, r"its records would inflate to \d+ bytes in all from a \d+-byte archive.*refused without")
    assert torch_load_calls == []


def test_overlapping_views_are_refused(tmp_path):
    """1536 stored values read as a (6, 256) weight with strides (1, 1): every value but the first 261 is read
    several times. Nothing is missing from the storage, so only the strides tell."""
    sd = _agent_state_dict()
    sd["actor_linear.weight"] = torch.randn(1536).as_strided((6, 256), (1, 1))
    _refused(
        _save(tmp_path, sd, "overlapping.pt"),
        r"actor_linear.weight \(6, 256\) with strides \(1, 1\) reads some "
        r"stored values more than once",
    )


def test_outputs_must_be_finite_in_the_dtype_asked_for(tmp_path):
    """Weights of 1e5 are finite in float32 but not in float16: the test step runs in the dtype the agent is
    loaded in."""
    sd = _agent_state_dict()
    sd["conv1.weight"] = torch.full_like(sd["conv1.weight"], 1e5)
    path = _save(tmp_path, sd, "big.pt")
    assert isinstance(load_agent(path, device="cpu"), ActorCritic)
    with pytest.raises(
        CheckpointError,
        match=r"big.pt'.*outputs on a test observation \(a black and a white frame\) "
        r"are not finite: NaN or inf in the value, logits",
    ):
        load_agent(path, device="cpu", dtype=torch.float16)


# --- shipping a training checkpoint (python -m engine.training.shipping) -----------------------------------------


def _training_checkpoint(tmp_path, meta='{"game": "PongNoFrameskip-v4", "frames": 1234}', **changes):
    source = tmp_path / "run" / "step_1234.pt"
    source.parent.mkdir(exist_ok=True)
    sd = _agent_state_dict()
    for key, value in changes.items():
        sd[key.replace("__", ".")] = value
    torch.save(sd, source)
    if meta is not None:
        source.with_suffix(".json").write_text(meta)
    return source


def _ship_refused(capsys, source, folder, *fragments):
    """``python -m engine.training.shipping`` refuses with one line naming the problem, writing nothing."""
    from engine.training.shipping import main

    with pytest.raises(SystemExit) as info:
        main([str(source), "--to", str(folder)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not folder.exists() or not any(folder.iterdir()), sorted(folder.iterdir())
    return err


def test_shipping_refuses_non_finite_weights(tmp_path, capsys):
    for bad in (float("nan"), float("inf")):
        weight = torch.zeros(6, 256)
        weight[2, :3] = bad
        source = _training_checkpoint(tmp_path, actor_linear__weight=weight)
        _ship_refused(
            capsys, source, tmp_path / "agents", "step_1234.pt", "actor_linear.weight (3 of 1536)", "NaN or inf"
        )


def test_shipping_refuses_malformed_metadata(tmp_path, capsys):
    folder = tmp_path / "agents"
    for meta, fragment in (
        ('["PongNoFrameskip-v4", 1234]', "a JSON list, not an object"),
        ('{"frames": 1234}', "no 'game'"),
        ('{"game": 7}', "no 'game'"),
        ('{"game": "PongNoFrameskip-v4", "frames": 99}', "says frames 99"),
        ('{"game": "PongNoFrameskip-v4",', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nests 100000 levels deep"),
        (None, "no metadata"),
    ):
        source = _training_checkpoint(tmp_path, meta=meta)
        if meta is None:
            source.with_suffix(".json").unlink(missing_ok=True)
        _ship_refused(capsys, source, folder, "step_1234.json", fragment)
    # and a well-formed one ships
    from engine.training.shipping import main

    main([str(_training_checkpoint(tmp_path)), "--to", str(folder)])
    assert "step_1234.pt" in capsys.readouterr().out and (folder / "step_1234.json").is_file()


def test_shipping_checks_every_checkpoint_and_the_folder_before_writing(tmp_path, capsys):
    """A bad checkpoint among several ships none of them; a --to that is a file is one line, not a traceback."""
    from engine.training.shipping import main

    good = _training_checkpoint(tmp_path)
    bad = tmp_path / "other" / "step_99.pt"
    bad.parent.mkdir()
    bad.write_text("not a checkpoint")
    folder = tmp_path / "agents"
    with pytest.raises(SystemExit) as info:
        main([str(good), str(bad), "--to", str(folder)])
    assert info.value.code == 2 and "step_99.pt" in capsys.readouterr().err and not folder.exists()
    (afile := tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as info:
        main([str(good), "--to", str(afile)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and f"--to {afile} is a file" in err and "Traceback" not in err


def test_a_changed_weight_in_a_zip_checkpoint_fails_its_checksum(tmp_path):
    """torch's reader does not check the zip's CRC-32s: one flipped bit in a weight record is refused, not loaded as
    another agent; the intact file loads."""
    path = _save(tmp_path, _agent_state_dict(), name="agent.pt")
    load_agent(path, device="cpu")
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)  # a weight record, stored uncompressed
    data = bytearray(path.read_bytes())
    local = record.header_offset  # the record's bytes follow its local header: 30 bytes, its name, its extra field
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little")
    start += int.from_bytes(data[local + 28 : local + 30], "little")
    data[start + 1000] ^= 0x10
    path.write_bytes(bytes(data))
    _refused(path, f"record '{record.filename}' does not match the checksum \\(CRC-32\\)")


def test_a_zip_record_of_an_unknown_compression_method_is_refused(tmp_path):
    """zipfile cannot read a record of compression method 99: one line naming the method, not its own error."""
    path = _save(tmp_path, _agent_state_dict(), name="agent.pt")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = archive.infolist()[0]
    local, central = record.header_offset, data.find(b"PK\x01\x02")
    data[local + 8 : local + 10] = data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    _refused(path, "records use compression method 99")
