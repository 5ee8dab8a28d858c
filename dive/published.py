"""The authors' published numbers, in one place.

Source: the DIVE poster table (NeurIPS 2020, "Learning Disentangled
Representations of Video with Missing Data", Comas, Zhang, Feric, Camps, Yu),
as transcribed in the project's design reference. Moving MNIST rows carry BCE,
MSE, PSNR and SSIM of the reconstructed input frames ("rec") and of the
predicted frames ("pred"), and the negative ELBO per element; the MOTS
pedestrian rows carry one value per metric, over all frames.

Used by reproduce.py (the table next to ours) and bench/learning_curve.py (the lines on its
plot) and nowhere else: docs quote what reproduce/table.md prints.
"""

from __future__ import annotations

SOURCE = "DIVE poster table (NeurIPS 2020), as transcribed in the design reference"

# (model, scenario) -> metrics
MOVING_MNIST: dict[tuple[str, str], dict] = {
    ("ddpae", "s1"): {"rec": {"bce": 182.66, "mse": 39.09, "psnr": 17.56, "ssim": 0.77},
                      "pred": {"bce": 417.00, "mse": 67.41, "psnr": 15.49, "ssim": 0.72}, "nelbo": -0.09},
    ("dive", "s1"): {"rec": {"bce": 119.25, "mse": 19.73, "psnr": 20.64, "ssim": 0.90},
                     "pred": {"bce": 459.10, "mse": 64.49, "psnr": 15.85, "ssim": 0.78}, "nelbo": -0.18},
    ("ddpae", "s2"): {"rec": {"bce": 266.03, "mse": 58.37, "psnr": 18.64, "ssim": 0.87},
                      "pred": {"bce": 409.26, "mse": 89.57, "psnr": 16.94, "ssim": 0.77}, "nelbo": -0.17},
    ("dive", "s2"): {"rec": {"bce": 165.42, "mse": 27.03, "psnr": 22.15, "ssim": 0.93},
                     "pred": {"bce": 321.29, "mse": 64.17, "psnr": 18.56, "ssim": 0.83}, "nelbo": -0.21},
    ("ddpae", "s3"): {"rec": {"bce": 322.23, "mse": 63.63, "psnr": 18.29, "ssim": 0.81},
                      "pred": {"bce": 403.48, "mse": 82.71, "psnr": 17.22, "ssim": 0.78}, "nelbo": -0.18},
    ("dive", "s3"): {"rec": {"bce": 272.74, "mse": 42.81, "psnr": 20.08, "ssim": 0.87},
                     "pred": {"bce": 374.59, "mse": 74.87, "psnr": 17.61, "ssim": 0.78}, "nelbo": -0.19},
}

PEDESTRIANS: dict[str, dict] = {
    "ddpae": {"bce": 2495.08, "mse": 560.37, "psnr": 22.22, "ssim": 0.90},
    "dive": {"bce": 1355.89, "mse": 328.96, "psnr": 24.82, "ssim": 0.96},
}
