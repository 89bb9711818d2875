"""The saliency core: tensors in, tensors out, on any device.

Policy interface and agents, preprocessing, blur and masks, perturbation saliency (batched and incremental),
Jacobian saliency, the loop reference. Imports nothing from the layers above (env, io, training, app).
"""
