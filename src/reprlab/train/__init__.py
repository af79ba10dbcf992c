"""Training: the shared loop (DDP, AMP, checkpoint + resume, progress) and curricula."""

from reprlab.train.loop import TrainConfig, TrainState, train  # noqa: F401
