"""Image bytes to the pixels a vision encoder reads, fast, with the checkpoint's own steps.

The transformers image processor (PIL backend) decodes every image in full, turns it
into a numpy array, back into a PIL image to resize, then rescales and normalizes in
float64 / float32 on the CPU: 140 ms for a 4000x3000 JPEG on one core, of which 64 ms
is the full decode of pixels the resize throws away. `FusedImageProcessor` follows the
same steps from the same config (size, resample, center crop, rescale factor,
mean / std) in a cheaper order:

1. JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8: PIL's `Image.draft`) that
   is still at least the size the processor resizes to, so a 12 MP photo bound for
   224x224 is decoded at 500x375 (the scaled IDCT averages the pixels it drops, much
   as the resize's filter would). Other formats decode in full.
2. One PIL resize straight to the target size (the processor's filter), the center
   crop, and the result stays uint8: (3, H, W), a quarter of float32's bytes, which
   is what crosses the object store to a model actor.
3. On the actor (the GPU, there) `normalize` maps uint8 to the processor's float32
   values with one table lookup per channel: the table holds, for each of the 256
   levels, exactly what the processor computes (float64 rescale, float32 cast,
   (x - mean) / std in float32), so the values are bit-identical to the processor's
   for the same uint8 pixels.

Without draft decoding the pixels equal the processor's exactly; with it they differ
where the reduced decode differs from a full decode then a resize (see the tests for
the bound). Processors whose steps are not these (BEiT, ConvNeXT, Donut, padding,
remote code) raise `UnsupportedImageProcessor`; `fused_image_processor` then returns
None and callers use the processor itself. A processor that looks covered is still
checked: at construction both paths run on two test pictures and must agree exactly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import CombinerError, ImageDecodeError, InputError
from .preprocess import DEFAULT_MAX_IMAGE_PIXELS, finish_image, open_image

if TYPE_CHECKING:
    # Imported where used: `FusedImageProcessor.pixels` (what a CPU worker runs) needs
    # neither torch nor transformers, which take seconds of a worker's start to import.
    import torch

log = logging.getLogger(__name__)

# The steps of transformers' PilBackend (image_processing_backends.py) this module
# reproduces; a processor class that overrides any of them does something else.
_STEPS = ("_preprocess", "process_image", "resize", "center_crop", "rescale", "normalize", "preprocess",
          "_preprocess_image_like_inputs", "_prepare_image_like_inputs", "convert_to_rgb", "__call__")
# EXIF orientations that swap width and height (transpose, rotate 90 / 270, transverse).
_SWAPS_SIDES = (5, 6, 7, 8)


class UnsupportedImageProcessor(CombinerError):
    """The image processor does steps the fused path does not reproduce."""


@dataclass(frozen=True)
class FusedImageProcessor:
    """An image processor's steps, fused: bytes -> uint8 (3, H, W) -> normalized float32.

    Build it with `fuse_image_processor(processor)`.

    Attributes:
        name: the processor's class name (for logs).
        size: the processor's resize rule (transformers SizeDict), None when it does not resize.
        resample: PIL resampling filter of the resize.
        crop: (height, width) of the center crop, or None.
        output_size: (height, width) of every image's pixels.
        table: (3, 256) float32: channel c's value for level v (rescale and normalize).
        rescale_factor: the rescale step's factor, None when it does not rescale.
        mean, std: the normalize step's, None when it does not normalize.
        draft: decode JPEGs at a reduced DCT scale when it still covers the target size.
    """

    name: str
    size: Any
    resample: int
    crop: tuple[int, int] | None
    output_size: tuple[int, int]
    table: np.ndarray
    rescale_factor: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    draft: bool = True
    _exact_on: dict = field(default_factory=dict, compare=False, repr=False)

    def pixels(self, data: bytes | None, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
        """Image bytes -> uint8 (3, H, W) at `output_size`.

        Raises ImageDecodeError (cause empty_image, unknown_format, corrupt_image,
        too_large) as `decode_image` does.
        """
        image = open_image(data, max_pixels=max_pixels)
        if self.draft and self.size is not None and image.format in ("JPEG", "MPO"):
            width, height = image.size
            swaps = _orientation(image) in _SWAPS_SIDES  # read once: it parses the EXIF block
            if swaps:
                width, height = height, width
            target_h, target_w = _resize_target(self.size, height, width)
            request = (target_h, target_w) if swaps else (target_w, target_h)
            try:
                image.draft("RGB", request)
            except Exception as exc:  # noqa: BLE001 - a header PIL read but cannot scale
                raise ImageDecodeError(f"image header is corrupt: {exc}", cause="corrupt_image") from exc
        return self.pixels_of(finish_image(image))

    def pixels_of(self, image: Image.Image) -> np.ndarray:
        """A decoded RGB image -> uint8 (3, H, W) at `output_size` (resize, then crop)."""
        if self.size is not None:
            height, width = _resize_target(self.size, image.height, image.width)
            image = image.resize((width, height), resample=self.resample)
        array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        if self.crop is not None:
            array = _center_crop(array, self.crop)
        if array.shape[1:] != self.output_size:
            # Only a processor whose output size depends on the image gets here, and
            # fuse_image_processor refuses those; a guard, not a user-facing case.
            raise UnsupportedImageProcessor(f"{self.name}: pixels are {array.shape[1:]}, not {self.output_size}")
        return np.ascontiguousarray(array)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> the processor's float32 pixel values, on `pixels`' device."""
        import torch

        if pixels.dtype != torch.uint8:
            raise TypeError(f"normalize takes uint8 pixels, got {pixels.dtype}")
        exact = self._exact_on.get(str(pixels.device))
        if exact is None:
            exact = self._exact_on[str(pixels.device)] = self._arithmetic_is_exact(pixels.device)
        if not exact:
            flat = torch.from_numpy(self.table.reshape(-1)).to(pixels.device)
            offsets = (torch.arange(pixels.shape[1], device=pixels.device) * 256).view(1, -1, 1, 1)
            return flat[pixels.long() + offsets]
        return self._arithmetic(pixels)

    def _arithmetic(self, pixels: torch.Tensor) -> torch.Tensor:
        # The processor's own operations in its own precisions: float64 rescale, float32
        # cast, float32 (x - mean) / std. In place: 0.2 ms for a 224x224 image on one
        # core, where a table lookup through int64 indices took 0.6-1.6 ms.
        import torch

        x = pixels.to(torch.float64)
        if self.rescale_factor is not None:
            x.mul_(self.rescale_factor)
        x = x.to(torch.float32)
        if self.mean is not None:
            device = pixels.device
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            x.sub_(mean).div_(std)
        return x

    def _arithmetic_is_exact(self, device: torch.device) -> bool:
        """Whether this device's arithmetic gives `table` for every level of every channel
        (so for every image); otherwise `normalize` looks the values up (slower, exact)."""
        import torch

        levels = torch.arange(256, dtype=torch.uint8, device=device).view(1, 1, 1, 256).expand(1, 3, 1, 256)
        got = self._arithmetic(levels.contiguous()).view(3, 256).cpu().numpy()
        if np.array_equal(got, self.table):
            return True
        log.info("images: %s arithmetic differs from the processor's in the last bit; normalizing by lookup", device)
        return False

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """Decoded RGB images -> float32 (N, 3, H, W): the processor's `pixel_values`."""
        import torch

        return self.normalize(torch.from_numpy(np.stack([self.pixels_of(im) for im in images])))


def fuse_image_processor(processor: object, *, draft: bool = True) -> FusedImageProcessor:
    """The fused form of a transformers image processor (PIL backend).

    Raises UnsupportedImageProcessor, naming why, for a processor whose steps are not
    resize / center crop / rescale / normalize to a fixed size, or whose output on two
    test pictures differs from the fused path's in any value.
    """
    from transformers.image_processing_backends import PilBackend

    name = type(processor).__name__
    if not isinstance(processor, PilBackend):
        raise UnsupportedImageProcessor(f"{name} is not a transformers PIL-backend image processor")
    overridden = [s for s in _STEPS if getattr(type(processor), s, None) is not getattr(PilBackend, s, None)]
    if overridden:
        raise UnsupportedImageProcessor(f"{name} has its own {', '.join(overridden)}")
    kwargs = {k: getattr(processor, k, None) for k in processor._valid_kwargs_names}
    kwargs = processor._standardize_kwargs(**kwargs)
    if kwargs.get("do_pad"):
        raise UnsupportedImageProcessor(f"{name} pads images (do_pad)")
    size = kwargs["size"] if kwargs.get("do_resize") else None
    crop = None
    if kwargs.get("do_center_crop"):
        crop_size = kwargs["crop_size"]
        crop = (int(crop_size.height), int(crop_size.width))
    if crop is not None:
        output_size = crop
    elif size is not None and size.height and size.width and not (size.shortest_edge or size.max_height):
        output_size = (int(size.height), int(size.width))
    else:
        raise UnsupportedImageProcessor(
            f"{name}'s output size depends on the image (size {dict(size) if size else None}, no center crop)"
        )
    resample = kwargs.get("resample")
    resample = int(resample) if resample is not None else int(Image.Resampling.BILINEAR)
    mean = std = None
    if kwargs.get("do_normalize"):
        mean, std = _per_channel(kwargs["image_mean"]), _per_channel(kwargs["image_std"])
    fused = FusedImageProcessor(
        name=name, size=size, resample=resample, crop=crop, output_size=output_size,
        table=_level_table(kwargs), draft=draft,
        rescale_factor=float(kwargs["rescale_factor"]) if kwargs.get("do_rescale") else None, mean=mean, std=std,
    )
    _check_against(processor, fused)
    return fused


@dataclass(frozen=True)
class FixedSize:
    """A resize to exactly height x width, with the attributes of transformers' SizeDict
    that `_resize_target` reads (the other rules None)."""

    height: int
    width: int
    shortest_edge: None = None
    longest_edge: None = None
    max_height: None = None
    max_width: None = None


# Image processors whose preprocessor_config.json alone says what their pixels are: the
# PIL backend's steps, unchanged (fuse_image_processor finds no override in them), with
# a resize to a fixed height x width and no crop or padding.
_CONFIG_ONLY_TYPES = ("ViTImageProcessor", "ViTImageProcessorPil")
# Every key such a config may hold; another key (a crop, padding, an old
# feature-extractor field) might change the pixels, so the config is not read alone.
_CONFIG_ONLY_KEYS = frozenset({
    "image_processor_type", "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std",
})
# The keys that must be there: a default left to transformers could change between versions.
_CONFIG_REQUIRED_KEYS = _CONFIG_ONLY_KEYS - {"image_processor_type"}


def fused_image_processor_from_config(config: Mapping[str, Any], *, draft: bool = True) -> FusedImageProcessor | None:
    """The fused processor a preprocessor_config.json describes, read without transformers
    (or torch): for a CPU worker that only turns image bytes into uint8 pixels, whose
    start-up would otherwise import both (4-7 s of CPU, measured on a 2-core machine).

    Covers the configs that say everything themselves: a ViT image processor resizing
    to a fixed height x width, no crop or padding, every step's setting written out.
    Returns None for any other config; callers then load the processor with
    transformers (`fused_image_processor`). `same_pixels` checks, where the processor is
    loaded anyway (a model actor), that the two agree.
    """
    if config.get("image_processor_type") not in _CONFIG_ONLY_TYPES:
        return None
    if not _CONFIG_REQUIRED_KEYS <= set(config) or not set(config) <= _CONFIG_ONLY_KEYS:
        return None
    size, resample = config["size"], config["resample"]
    if config["do_resize"] is not True or not isinstance(size, Mapping) or set(size) != {"height", "width"}:
        return None
    if not all(isinstance(v, int) and v > 0 for v in (size["height"], size["width"])) or not isinstance(resample, int):
        return None
    if not (isinstance(config["do_rescale"], bool) and isinstance(config["do_normalize"], bool)):
        return None
    try:
        kwargs = dict(config)
        table = _level_table(kwargs)
        mean = std = None
        if config["do_normalize"]:
            mean, std = _per_channel(config["image_mean"]), _per_channel(config["image_std"])
        rescale = float(config["rescale_factor"]) if config["do_rescale"] else None
    except (TypeError, ValueError, UnsupportedImageProcessor):
        return None
    height, width = int(size["height"]), int(size["width"])
    return FusedImageProcessor(
        name=f"{config['image_processor_type']} (from preprocessor_config.json)", size=FixedSize(height, width),
        resample=resample, crop=None, output_size=(height, width), table=table, rescale_factor=rescale,
        mean=mean, std=std, draft=draft,
    )


def fused_image_processor_of(uri: str, *, storage_options: dict[str, Any] | None = None) -> FusedImageProcessor | None:
    """`fused_image_processor_from_config` of the checkpoint folder at `uri` (local or any
    fsspec URI; its preprocessor_config.json is the one file read), or None: a hub id, a
    folder that also holds a processor_config.json (which may override the image
    processor's settings), a file that is missing or unreadable, a config not covered.
    None means "load the image processor with transformers", which reports any problem.
    """
    import json

    from .storage import get_filesystem, is_hub_id, is_remote, local_path

    if is_hub_id(uri):
        return None
    try:
        if is_remote(uri):
            fs, root = get_filesystem(uri, storage_options)
            root = root.rstrip("/")
            if fs.exists(f"{root}/processor_config.json"):
                return None
            text = fs.cat_file(f"{root}/preprocessor_config.json")
        else:
            folder = local_path(uri)
            if (folder / "processor_config.json").exists():
                return None
            text = (folder / "preprocessor_config.json").read_bytes()
        config = json.loads(text)
    except Exception:  # noqa: BLE001 - any problem here is left to the transformers path to report
        return None
    return fused_image_processor_from_config(config) if isinstance(config, dict) else None


# Image sizes `same_pixels` resizes by both processors' rules: landscape, portrait, square.
_PROBE_SIZES = ((1200, 1600), (4000, 3000), (64, 64), (31, 517))


def same_pixels(a: FusedImageProcessor, b: FusedImageProcessor) -> bool:
    """Whether two fused processors make the same pixels of the same image bytes (resize
    rule, filter, crop, draft decoding, output size; normalization is not compared)."""
    if (a.resample, a.crop, a.output_size, a.draft) != (b.resample, b.crop, b.output_size, b.draft):
        return False
    if (a.size is None) != (b.size is None):
        return False
    return a.size is None or all(_resize_target(a.size, h, w) == _resize_target(b.size, h, w) for h, w in _PROBE_SIZES)


_CACHE: dict[int, tuple[object, FusedImageProcessor | None]] = {}
_CACHE_LOCK = threading.Lock()


def fused_image_processor(processor: object) -> FusedImageProcessor | None:
    """`fuse_image_processor(processor)`, once per processor object; None (and one log
    line saying why) when the processor is not covered, so callers use it as it is."""
    with _CACHE_LOCK:
        hit = _CACHE.get(id(processor))
        if hit is not None and hit[0] is processor:
            return hit[1]
        try:
            fused: FusedImageProcessor | None = fuse_image_processor(processor)
        except UnsupportedImageProcessor as exc:
            log.warning("images: the fused preprocessing does not cover this processor (%s); "
                        "each image goes through the processor itself, slower", exc)
            fused = None
        _CACHE[id(processor)] = (processor, fused)
        return fused


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: finish_image's exif_transpose decides
        return 1


def _resize_target(size: Any, height: int, width: int) -> tuple[int, int]:
    """(height, width) the processor resizes a height x width image to: the branches of
    transformers' PilBackend.resize, in its order, with its own helpers (imported in the
    branches that use them: a fixed height x width needs no transformers)."""
    if size.shortest_edge and size.longest_edge:
        from transformers.image_transforms import get_size_with_aspect_ratio

        return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
    if size.shortest_edge:
        from transformers.image_transforms import get_resize_output_image_size
        from transformers.image_utils import ChannelDimension

        shape_only = np.broadcast_to(np.zeros((), np.uint8), (1, height, width))  # no pixels allocated
        return tuple(get_resize_output_image_size(
            shape_only, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST,
        ))
    if size.max_height and size.max_width:
        from transformers.image_utils import get_image_size_for_max_height_width

        return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
    if size.height and size.width:
        return (int(size.height), int(size.width))
    raise UnsupportedImageProcessor(f"resize size {dict(size)} has no rule the processor knows")


def _center_crop(array: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    from transformers.image_transforms import center_crop
    from transformers.image_utils import ChannelDimension

    return center_crop(array, crop, data_format=ChannelDimension.FIRST, input_data_format=ChannelDimension.FIRST)


def _level_table(kwargs: dict[str, Any]) -> np.ndarray:
    """(3, 256) float32: what the processor's rescale then normalize make of each level,
    computed as transformers computes it (rescale in float64 then float32; normalize in
    float32), so the lookup is exact."""
    levels = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)  # (channels, levels)
    values = levels.astype(np.float32)
    if kwargs.get("do_rescale"):
        values = (levels.astype(np.float64) * kwargs["rescale_factor"]).astype(np.float32)
    if kwargs.get("do_normalize"):
        mean = np.array(_per_channel(kwargs["image_mean"]), dtype=np.float32)
        std = np.array(_per_channel(kwargs["image_std"]), dtype=np.float32)
        values = ((values.T - mean) / std).T
    return np.ascontiguousarray(values, dtype=np.float32)


def _per_channel(value: Any) -> tuple[float, float, float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 3
    if len(values) != 3:
        raise UnsupportedImageProcessor(f"mean / std {value!r} is not one value or three (RGB)")
    return tuple(float(v) for v in values)


def _check_against(processor: object, fused: FusedImageProcessor) -> None:
    """Both paths on a landscape and a portrait test picture (one smaller than a typical
    crop): any value that differs means the processor does something else."""
    rng = np.random.default_rng(0)
    for height, width in ((131, 173), (203, 97)):
        image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")
        theirs = np.asarray(processor(images=[image], return_tensors="np")["pixel_values"][0])
        try:
            ours = fused([image])[0].numpy()
        except UnsupportedImageProcessor as exc:
            raise UnsupportedImageProcessor(
                f"{type(processor).__name__}'s pixels differ from the fused steps' on a test picture ({exc})"
            ) from exc
        if theirs.shape != ours.shape or not np.array_equal(theirs.astype(np.float32), ours):
            diff = (float(np.abs(theirs - ours).max()) if theirs.shape == ours.shape
                    else f"shape {theirs.shape} vs {ours.shape}")
            raise UnsupportedImageProcessor(
                f"{type(processor).__name__}'s pixels differ from the fused steps' on a test picture ({diff})"
            )


def encode_images(processor: object, images: list[bytes], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Image bytes -> what crosses to the model: uint8 (N, 3, H, W) through the fused
    path, or the processor's float32 pixel values when it is not covered (see
    `model_pixel_values`). Raises the InputError of the first bad image (`encode_each`
    keeps the others)."""
    out = encode_each(processor, images, max_pixels=max_pixels)
    for item in out:
        if isinstance(item, InputError):
            raise item
    return np.stack(out)


def encode_each(processor: object, images: Sequence[bytes | None], *,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[np.ndarray | InputError]:
    """`encode_images` image by image: each image's array (3, H, W), or the InputError
    that refused it, so a bad image costs its own row only.

    A processor the fused path does not cover gets every image that decodes in ONE
    call (a transformers processor costs milliseconds a call whatever the batch); only
    if that call fails are the images passed one at a time, to find which one it was.
    """
    from .preprocess import decode_image, image_to_pixel_values

    fused = processor if isinstance(processor, FusedImageProcessor) else fused_image_processor(processor)
    out: list[np.ndarray | InputError | None] = [None] * len(images)
    decoded: dict[int, Image.Image] = {}
    for i, data in enumerate(images):
        try:
            if fused is not None:
                out[i] = fused.pixels(data, max_pixels=max_pixels)
            else:
                decoded[i] = decode_image(data, max_pixels=max_pixels)
        except InputError as exc:
            out[i] = exc
    if decoded:
        try:
            values = image_to_pixel_values(processor, list(decoded.values())).numpy()
            for i, v in zip(decoded, values, strict=True):
                out[i] = v
        except Exception:  # noqa: BLE001 - one image broke the batch call: find it
            for i, image in decoded.items():
                try:
                    out[i] = image_to_pixel_values(processor, [image]).numpy()[0]
                except Exception as exc:  # noqa: BLE001 - the processor's own error, per row
                    out[i] = ImageDecodeError(
                        f"the image processor ({type(processor).__name__}) failed on this image: "
                        f"{type(exc).__name__}: {exc}", cause="unprocessable_image")
    return out  # type: ignore[return-value]


def model_pixel_values(processor: object, pixels: np.ndarray | torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """`encode_images`' output on `device` as the float32 pixel values the encoder reads:
    uint8 is normalized there (the processor's rescale and normalize); float passes as is."""
    import torch

    tensor = torch.as_tensor(pixels).to(device)
    if tensor.dtype != torch.uint8:
        return tensor
    fused = fused_image_processor(processor)
    if fused is None:
        raise UnsupportedImageProcessor(
            f"uint8 pixels came for {type(processor).__name__}, which the fused path does not cover; "
            "the preprocessing and the model must load the same checkpoint"
        )
    return fused.normalize(tensor)
