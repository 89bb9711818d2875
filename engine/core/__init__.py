"""The saliency core: tensors in, tensors out, on any device.

The policy interface (a protocol: no agent lives here), preprocessing, blur and masks, perturbation saliency
(batched and incremental), Jacobian saliency, replaying recurrent states, the loop reference. Imports nothing from
the layers above.
"""
