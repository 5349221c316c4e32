"""The exported models at run time: model.json plus ONNX Runtime sessions for Inv-Id, Inv-Noise and the
conditional denoiser. No torch.

ONNX interface (written by training/export.py); (H, W) is model.json's `resolution` (the generator's) and
(h, w) its `inv_id_resolution` (Inv-Id's own, the generator's when absent):
  inv_id.onnx    image [N,3,h,w] in [0,1]            -> code [N,D]
  inv_noise.onnx image [N,3,H,W] in [0,1]            -> noise [N,3,H,W]
  denoiser.onnx  noisy [N,3,H,W], noise_variance [N,1], code [N,D] -> eps [N,3,H,W]  (normalised space)
A network may also ship an INT8 variant (`int8_files` in model.json, made by training/quantize.py) with the
same interface and code space, served on CPU where model.json's `cpu_precision` says so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from genreid.service.batching import Coalescer
from genreid.service.core.model_json import (
    MODEL_FILES,
    ModelError,
    ModelMetadata,
    Precision,
)
from genreid.service.core.schedule import ddim_sample

log = logging.getLogger(__name__)

# Metadata key of a quantised ONNX file: the model_id of the float network it was made from.
MODEL_ID_KEY = "genreid.model_id"
# The networks that read crops; each reads them at its own (H, W) (ModelMetadata.input_sizes).
ImageNetwork = Literal["inv_id", "inv_noise"]


_pool_lock = threading.Lock()
_pool_threads: int | None = None  # the process-wide pool's size, once created


def open_session(path: Path, providers: list[str], threads: int = 0) -> Any:
    """An ONNX Runtime session on the process-wide intra-op pool. With a pool per session, the idle threads
    of the network that just ran spin against the next one's: Inv-Id then Inv-Noise on one crop took 10.3 ms
    with per-session pools and 7.6 ms with one (docs/BENCHMARKS.md). ONNX Runtime allows one such pool per
    process, and then no session of its own, so every session goes through here; the first sizes the pool
    (`threads`, 0: one per core)."""
    import onnxruntime as ort

    global _pool_threads
    with _pool_lock:
        if _pool_threads is None:
            ort.set_global_thread_pool_sizes(threads, 1)
            _pool_threads = threads
        elif _pool_threads != threads:
            log.warning("ONNX Runtime's process-wide thread pool already has threads=%d; threads=%d is ignored",
                        _pool_threads, threads)
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # ONNX Runtime's own exception types derive from Exception alone
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from err


def choose_providers(device: str) -> list[str]:
    """ONNX Runtime providers for 'auto', 'cpu' or 'cuda' ('cuda' fails loudly when unavailable)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ModelError(f"device 'cuda' requested but ONNX Runtime offers only {available}")
    return ["CPUExecutionProvider"]


class Encoders:
    """Batched inference over the three exported networks."""

    def __init__(self, models_dir: str | Path, device: str = "auto", batch_size: int = 64, threads: int = 0,
                 precision: Precision = "auto", metadata: ModelMetadata | None = None):
        """`threads` sizes the process-wide ONNX Runtime pool (see `open_session`). `precision` "auto" serves
        the INT8 variants model.json picks for CPUs (about twice as fast there) and float32 on CUDA; "float" or
        "int8" forces one (`self.precision` says what each network runs in)."""
        self.models_dir = Path(models_dir)
        # An export being assembled passes the metadata it has not saved yet (training/export.py).
        self.metadata = ModelMetadata.load(self.models_dir) if metadata is None else metadata
        self.batch_size = batch_size
        providers = choose_providers(device)
        self.precision = self.metadata.precisions(precision, cuda=providers[0] == "CUDAExecutionProvider")
        self.sessions: dict[str, Any] = {}
        for name, kind in self.precision.items():
            path = self.models_dir / (self.metadata.int8_files[name] if kind == "int8" else MODEL_FILES[name])
            if not path.is_file():
                raise ModelError(f"{path}: missing model file")
            self.sessions[name] = open_session(path, providers, threads)
            self._check_input(name, path)
            if kind == "int8":
                self._check_variant(path, self.sessions[name])
        self.providers = self.sessions["inv_id"].get_providers()
        if device == "cuda" and self.providers[0] != "CUDAExecutionProvider":
            # ONNX Runtime falls back to the CPU silently when the CUDA libraries fail to load.
            raise ModelError(f"device 'cuda' requested but ONNX Runtime runs on {self.providers}")
        # Concurrent requests' crops share one run per network (service/batching.py).
        self._coalescers = {name: Coalescer(partial(self._run_session, name), batch_size)
                            for name in get_args(ImageNetwork)}
        log.info("loaded models from %s on %s in %s", self.models_dir, self.providers, self.precision)

    def _check_variant(self, path: Path, session: Any) -> None:
        """An INT8 file made from another float model would put codes in a foreign space under this model's id."""
        made_from = session.get_modelmeta().custom_metadata_map.get(MODEL_ID_KEY)
        if self.metadata.model_id is None or made_from != self.metadata.model_id:
            raise ModelError(f"{path} was quantised from model {made_from}, but model.json's model_id is "
                             f"{self.metadata.model_id}: re-run `genreid export --to {self.models_dir} --data MARKET`")

    def _check_input(self, name: str, path: Path) -> None:
        """A model.json whose sizes disagree with a file (say an Inv-Id reading 128x64 under a model.json without
        inv_id_resolution) is refused at load, not on the first request."""
        declared = self.sessions[name].get_inputs()[0].shape[1:]
        expected = (3, *self.metadata.input_sizes[name])
        if len(declared) != len(expected) or any(isinstance(got, int) and got != want
                                                 for got, want in zip(declared, expected, strict=True)):
            raise ModelError(f"{path} takes images of shape [N, {', '.join(map(str, declared))}], but model.json "
                             f"gives {name} [N, {', '.join(map(str, expected))}]")

    def observe_batches(self, observe: Callable[[str, int], None]) -> None:
        """Have `observe(network, images)` told the size of every coalesced inference run (metrics)."""
        for name, coalescer in self._coalescers.items():
            coalescer.observe = partial(observe, name)

    @property
    def resolution(self) -> tuple[int, int]:
        """The generator's (H, W): what Inv-Noise reads and `render` draws."""
        return self.metadata.resolution

    @property
    def identity_resolution(self) -> tuple[int, int]:
        """Inv-Id's input (H, W): the generator's, or finer."""
        return self.metadata.identity_resolution

    @property
    def input_sizes(self) -> dict[str, tuple[int, int]]:
        """network -> the (H, W) its images must have."""
        return self.metadata.input_sizes

    def _run(self, name: ImageNetwork, images: np.ndarray) -> np.ndarray:
        """Checked here against that network's own size, so a crop resized for another network never reaches it,
        and one caller's bad shape never fails the others it would be batched with."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = (3, *self.input_sizes[name])
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"{name} expects images of shape (N, {expected}), got {images.shape}")
        if len(images) == 0:
            return np.zeros((0,), np.float32)
        return self._coalescers[name](images)

    def _run_session(self, name: str, images: np.ndarray) -> np.ndarray:
        session = self.sessions[name]
        input_name = session.get_inputs()[0].name
        return np.concatenate([
            session.run(None, {input_name: images[start : start + self.batch_size]})[0]
            for start in range(0, len(images), self.batch_size)
        ])

    def identity(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) in [0, 1] at `identity_resolution` -> (N, code_dim) identity codes."""
        return self._run("inv_id", images).reshape(len(images), self.metadata.code_dim)

    def noise(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) in [0, 1] at `resolution` -> (N, 3, H, W) generator noise (pose, background, light)."""
        return self._run("inv_noise", images).reshape(images.shape)

    def render(self, codes: np.ndarray, noises: np.ndarray) -> np.ndarray:
        """Generate images of identities `codes` in the poses held by `noises`; (N, 3, H, W) in [0, 1]."""
        session = self.sessions["denoiser"]
        names = [inp.name for inp in session.get_inputs()]
        codes = np.ascontiguousarray(codes, dtype=np.float32)

        def denoise(images: np.ndarray, variance: float, batch_codes: np.ndarray) -> np.ndarray:
            variances = np.full((len(images), 1), variance, dtype=np.float32)
            feeds = dict(zip(names, (images.astype(np.float32), variances, batch_codes), strict=True))
            return session.run(None, feeds)[0]

        x0 = ddim_sample(denoise, np.asarray(noises, np.float32), codes, self.metadata.steps,
                         self.metadata.schedule)
        mean = np.asarray(self.metadata.mean, np.float32)[:, None, None]
        std = np.asarray(self.metadata.std, np.float32)[:, None, None]
        return np.clip(x0 * std + mean, 0.0, 1.0)
