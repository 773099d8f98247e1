"""The standard small pipeline the tests run: a few frames a clip, short captions, a short FIFO."""

from rlivs.runtime.config import CaptionConfig, ClipConfig, FifoConfig, PipelineConfig

_CLIP, _FIFO = ClipConfig(), FifoConfig()


def small_config(frames_per_clip: int = 4, caption_tokens: int = 12, *, fifo_clips: int | None = 2,
                 fps: float = _CLIP.fps, **overrides) -> PipelineConfig:
    """PipelineConfig(clip=(fps, frames_per_clip), fifo=(capacity_clips=fifo_clips), caption=(caption_tokens));
    `overrides`: other PipelineConfig sections (selection=..., answer=...) or whole ones (fifo=FifoConfig(...))."""
    sections = {"clip": ClipConfig(fps=fps, frames_per_clip=frames_per_clip),
                "fifo": FifoConfig(capacity_clips=fifo_clips),
                "caption": CaptionConfig(max_new_tokens=caption_tokens)}
    return PipelineConfig(**{**sections, **overrides})


DEFAULT_FIFO_CLIPS = _FIFO.capacity_clips  # fifo_clips=DEFAULT_FIFO_CLIPS: FifoConfig() unchanged
