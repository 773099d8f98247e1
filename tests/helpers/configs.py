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


QWEN_FPS = 2.0  # Qwen2.5-VL tests: 1 s per temporal patch of 2 frames (temporal ids advance 2 per patch)


def qwen_config(positions: str = "original", caption_tokens: int = 10) -> PipelineConfig:
    """The small pipeline for the tiny Qwen2.5-VL models: 4 frames (2 temporal patches) a clip, a FIFO of 2 clips
    whose tokens keep their `positions` ("original" or "sequential" M-RoPE ids), a quarter of each clip kept."""
    from rlivs.runtime.config import SelectionConfig

    return small_config(4, caption_tokens, fps=QWEN_FPS, fifo=FifoConfig(capacity_clips=2, positions=positions),
                        selection=SelectionConfig(keep_ratio=0.25))
