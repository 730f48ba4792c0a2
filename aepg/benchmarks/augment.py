"""Image transforms on whole batches of uint8 images, on the training device.

A view maps a padded uint8 batch (B, 3, H, W) and each image's (height, width) to normalised
float inputs (B, 3, S, S) in one ``torchvision.ops.roi_align`` call: every image is cropped to a
box and resized to S x S, bilinearly, averaging ceil(box / S) samples per output pixel, which
antialiases as a downscale should. The boxes are:

- training with ``augment`` (the paper's protocol): torchvision's ``RandomResizedCrop`` (scale
  0.05-1 by default, ratio 3/4-4/3, ten tries then a centre crop), or with ``crop: padded``
  torchvision's ``RandomCrop(S, padding)`` of the image resized to S, and a horizontal flip with
  probability 1/2, drawn from a ``torch.Generator`` on the CPU that the trainer seeds per epoch,
  so a resumed run draws what the uninterrupted run drew, whatever the data-loading workers do;
- testing with ``augment``: resize the short side to S / 0.875 and take the centre S x S crop
  (``resized``), or the whole image (``padded``); with ``test_interpolation: bicubic`` the resize
  is torchvision's bicubic, antialiased ``Resize`` of each image (one call per image);
- without ``augment`` (small images such as digits): the whole image, resized to S x S.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TEST_CROP_FRACTION = 0.875
SCALE = (0.05, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10


def random_resized_crops(sizes: Tensor, generator: torch.Generator, scale=SCALE, ratio=RATIO) -> Tensor:
    """(B, 4) boxes (x0, y0, x1, y1) in pixels, drawn as ``RandomResizedCrop.get_params`` draws them:
    up to ten (area, aspect ratio) tries, the first whose crop fits; else the centre crop with the
    aspect ratio clamped to ``ratio``."""
    heights, widths = sizes[:, 0].double(), sizes[:, 1].double()
    batch = len(sizes)
    area = (heights * widths)[:, None] * torch.empty(batch, TRIES, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch, TRIES, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (h > 0) & (w <= widths[:, None]) & (h <= heights[:, None])
    first = fits.double().argmax(dim=1)
    pick = lambda t: t.gather(1, first[:, None]).squeeze(1)  # noqa: E731
    crop_w, crop_h = pick(w), pick(h)
    # The fallback centre crop for images where no try fitted.
    in_ratio = widths / heights
    fallback_w = torch.where(in_ratio < ratio[0], widths, torch.where(in_ratio > ratio[1], torch.round(heights * ratio[1]), widths))
    fallback_h = torch.where(in_ratio < ratio[0], torch.round(widths / ratio[0]), heights)
    found = fits.any(dim=1)
    crop_w, crop_h = torch.where(found, crop_w, fallback_w), torch.where(found, crop_h, fallback_h)
    # A uniform integer offset in [0, size - crop], as torch.randint draws it.
    u = torch.rand(batch, 2, dtype=torch.float64, generator=generator)
    x0 = torch.where(found, torch.floor(u[:, 0] * (widths - crop_w + 1)), torch.floor((widths - crop_w) / 2))
    y0 = torch.where(found, torch.floor(u[:, 1] * (heights - crop_h + 1)), torch.floor((heights - crop_h) / 2))
    return torch.stack([x0, y0, x0 + crop_w, y0 + crop_h], dim=1).float()


def padded_crops(sizes: Tensor, generator: torch.Generator, image_size: int, padding: int) -> Tensor:
    """(B, 4) boxes of ``RandomCrop(S, padding)`` applied to each image resized to S x S: the whole
    image shifted by a whole number of output pixels in [-padding, padding] on each axis (the part
    outside the image reads as zero padding)."""
    shift = torch.randint(0, 2 * padding + 1, (len(sizes), 2), generator=generator).double() - padding
    heights, widths = sizes[:, 0].double(), sizes[:, 1].double()
    x0, y0 = shift[:, 0] * widths / image_size, shift[:, 1] * heights / image_size
    return torch.stack([x0, y0, x0 + widths, y0 + heights], dim=1).float()


def test_resize(image_size: int) -> int:
    """The short side test images are resized to before their centre crop."""
    return int(image_size / TEST_CROP_FRACTION)


def centre_crops(sizes: Tensor, image_size: int) -> Tensor:
    """The boxes, in source pixels, of torchvision's ``Resize(S / 0.875)`` then ``CenterCrop(S)``."""
    heights, widths = sizes[:, 0].double(), sizes[:, 1].double()
    short = test_resize(image_size)
    portrait = widths <= heights
    new_w = torch.where(portrait, torch.full_like(widths, short), torch.floor(short * widths / heights))
    new_h = torch.where(portrait, torch.floor(short * heights / widths), torch.full_like(heights, short))
    left, top = torch.round((new_w - image_size) / 2), torch.round((new_h - image_size) / 2)
    sx, sy = widths / new_w, heights / new_h
    return torch.stack([left * sx, top * sy, (left + image_size) * sx, (top + image_size) * sy], dim=1).float()


def whole_images(sizes: Tensor) -> Tensor:
    zeros = torch.zeros(len(sizes))
    return torch.stack([zeros, zeros, sizes[:, 1].float(), sizes[:, 0].float()], dim=1)


class BatchView:
    """uint8 batch + sizes -> normalised (B, 3, S, S) inputs on the batch's device."""

    def __init__(self, image_size: int, mean, std, augment: bool, train: bool, channels_last: bool = False,
                 crop: str = "resized", scale_min: float = SCALE[0], padding: int = 0, interpolation: str = "bilinear"):
        self.image_size, self.augment, self.train, self.channels_last = image_size, augment, train, channels_last
        self.crop, self.scale, self.padding = crop, (scale_min, SCALE[1]), padding
        self.bicubic = interpolation == "bicubic" and augment and not train and crop == "resized"
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    def boxes(self, sizes: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        """Crop boxes (B, 4) and, when training with augmentation, which images to flip (B,)."""
        sizes = sizes.cpu()
        if self.augment and self.train:
            if self.crop == "padded":
                boxes = padded_crops(sizes, generator, self.image_size, self.padding)
            else:
                boxes = random_resized_crops(sizes, generator, self.scale)
            return boxes, torch.rand(len(sizes), generator=generator) < 0.5
        if self.augment and self.crop == "resized":
            return centre_crops(sizes, self.image_size), None
        return whole_images(sizes), None

    def bicubic_centre_crops(self, images: Tensor, sizes: Tensor) -> Tensor:
        """torchvision's ``Resize(S / 0.875, bicubic, antialias)`` then ``CenterCrop(S)``, per image."""
        short, size, out = test_resize(self.image_size), self.image_size, []
        for image, (height, width) in zip(images, sizes.tolist()):
            new_h, new_w = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
            resized = torch.nn.functional.interpolate(image[None, :, :height, :width].float(), size=(new_h, new_w),
                                                      mode="bicubic", antialias=True, align_corners=False)
            top, left = round((new_h - size) / 2), round((new_w - size) / 2)
            out.append(resized[0, :, top:top + size, left:left + size].clamp(0, 255))
        return torch.stack(out)

    def __call__(self, images: Tensor, sizes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        from torchvision.ops import roi_align

        if self.bicubic:
            return self._normalise(self.bicubic_centre_crops(images, sizes.cpu()))
        boxes, flips = self.boxes(sizes, generator)
        if self.crop == "padded" and self.train and self.augment:
            # Zero padding as RandomCrop pads: roi_align reads the edge pixel up to one pixel out.
            margin = int(math.ceil(self.padding * float(sizes.max()) / self.image_size)) + 1
            images = torch.nn.functional.pad(images, (margin, margin, margin, margin))
            boxes = boxes + margin
        rois = torch.cat([torch.arange(len(boxes), dtype=torch.float32)[:, None], boxes], dim=1).to(images.device)
        out = roi_align(images.float(), rois, output_size=self.image_size, spatial_scale=1.0, sampling_ratio=-1,
                        aligned=True)
        if flips is not None:
            flips = flips.to(images.device).view(-1, 1, 1, 1)
            out = torch.where(flips, out.flip(-1), out)
        return self._normalise(out)

    def _normalise(self, out: Tensor) -> Tensor:
        out = (out - self.mean.to(out.device)) / self.std.to(out.device)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
