"""The discriminative peer of the official benchmark: torchreid's OSNet-x0.25 trained from scratch by torchreid's own
engine on our training identities at our Inv-Id's input size (128x64), scored by our evaluator.

A number for Inv-Id means little without a discriminative network trained on the same identities, at the same input
size, under the same protocol. This trains that network as torchreid trains it and scores it as `genreid evaluate`
scores ours:

- data: `--data-root`'s bounding_box_train/ less the validation identities that our trainer carves out of it
  (`genreid.training.data.cache.hold_out_identities`, `--val-identities` and `--split-seed` as the official run:
  100 and 0), so the peer learns exactly the identities our Inv-Id learns, relabelled 0..N-1 in a torchreid
  `ImageDataset` registered under its own name; the validation identities split into queries and gallery as our
  trainer splits them (`query_gallery_split`, one query per person and camera);
- training: `torchreid.engine.ImageSoftmaxEngine` over torchreid's `ImageDataManager` (its transforms, its
  RandomSampler, batch 64, last partial batch dropped), torchreid's `build_optimizer` and `build_lr_scheduler`, on
  `osnet_x0_25(pretrained=False)`;
- scoring: `genreid.service.core.evaluation.Evaluator`, standard protocol, no re-ranking, on the 512-d features of
  the eval-mode network (torchreid's test transform at 128x64), ranked by direction as our service ranks codes: every
  `--eval-every` epochs on the validation split (the validation curve), at the end on the official query/ and
  bounding_box_test/ read as `genreid evaluate` reads them (junk dropped, distractors kept).

The recipe is torchreid's OSNet softmax recipe, configs/im_osnet_x1_0_softmax_256x128_amsgrad.yaml of
KaiyangZhou/deep-person-reid (torchreid 0.2.5 on PyPI repackages that torchreid, 1.4.0, as `torchreid.reid`):
label-smoothed softmax, AMSGrad at lr 0.0015 with build_optimizer's weight decay 5e-4, batch 64, 150 epochs, lr x0.1
every 60 epochs ('single_step', stepsize 60), random flip as the only augmentation (no random crop or erasing).
Adapted to this benchmark: no ImageNet weights, so none of the config's `fixbase_epoch: 10` (the classifier trained
alone over pretrained features first); 128x64 input instead of 256x128; a CPU; our evaluator instead of the
config's test settings (Euclidean distance between unnormalised features). The osnet_x0_25 config beside it (lr
0.003, batch 128, 180 epochs, step 80) fine-tunes ImageNet weights too.

torchreid 0.2.5's package imports, at import time, modules that this path never runs: scipy and gdown (other data
sets' loaders, weight downloads), cv2 (ranked-result pictures), TensorBoard (`Engine.run`'s logger; this script
calls `Engine.train` per epoch) and torchvision. While torchreid is imported, each absent one stands in as a module
whose every use raises. torchvision's transforms are the exception: torchreid builds its transforms from them, and
PyPI's torchvision needs the CUDA build of torch, so where torchvision is absent its five PIL transforms that the
recipe composes (Resize, RandomHorizontalFlip, ToTensor, Normalize, Compose) stand in, written to compute what
torchvision computes on PIL images; Market-1501 crops are 128x64 already, so Resize changes no pixel.

The run directory (`--out`) holds config.json, checkpoint.pt (network, optimizer, scheduler, random state, written
after every epoch), log.jsonl (one line per epoch: loss, accuracy, lr, wall and CPU seconds, and every
`--eval-every` epochs the validation metrics) and, at the end, osnet_x0_25.pt (the trained network less its
classifier: what `bench/peer_throughput.py --peer-weights` loads). The same command again resumes; with
`--evaluate-only` it scores the last checkpoint. The result file (bench/results/peer_training.json) has the
machine, the epochs, CPU seconds (this process and its data-loading workers) and wall seconds summed over every
sitting of the run, the validation curve and the official test metrics. Once measured, its numbers go in
docs/BENCHMARKS.md and the accuracy table of README.md.

    pip install -c constraints/cpu.txt -e '.[peer]'     # torchreid, bench-only
    python bench/peer_training.py --data-root ../shared/data/market1501 --out ../runs/peer-osnet-x0.25
    python bench/peer_training.py --data-root ../shared/data/market1501 --out ../runs/peer-quick --quick
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from _common import add_common_arguments, announced_machine, portable, print_table, write_result
from PIL import Image

from genreid.service.cli import LabelledCrops
from genreid.service.core.evaluation import Evaluator
from genreid.service.core.market import check_layout, read_split
from genreid.training.data.cache import ImageSet, hold_out_identities, query_gallery_split

INSTALL = "pip install -c constraints/cpu.txt -e '.[peer]'"
DATASET = "market1501_genreid_split"  # the torchreid data set name of our training identities
SIZE = (128, 64)  # (height, width): the shipped Inv-Id's input
TEST_BATCH = 300  # the recipe's test batch size
# Imported by torchreid's package but used only where this script never goes (see the docstring).
UNUSED_IMPORTS = ("scipy", "scipy.io", "gdown", "cv2", "torch.utils.tensorboard", "torchvision")
# What must equal between sittings of one run directory.
RECIPE_FIELDS = ("batch", "lr", "stepsize", "val_identities", "split_seed", "seed", "train_identities")


class _Absent(ModuleType):
    """A module torchreid imports but this script never uses: any use of it raises."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def absent(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{self.__name__}.{name}: not installed (bench/peer_training.py never needs it)")

        return absent


class _Compose:
    def __init__(self, transforms: list[Any]):
        self.transforms = transforms

    def __call__(self, image: Any) -> Any:
        for transform in self.transforms:
            image = transform(image)
        return image


class _Resize:
    """torchvision's Resize of a PIL image to (height, width): PIL's bilinear resize."""

    def __init__(self, size: tuple[int, int], interpolation: int = Image.Resampling.BILINEAR):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.resize((self.size[1], self.size[0]), self.interpolation)


class _RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < self.p else image


class _ToTensor:
    """An RGB PIL image -> float32 (3, H, W) in [0, 1]."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).contiguous().float().div(255)


class _Normalize:
    def __init__(self, mean: list[float], std: list[float]):
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


def _pil_transforms() -> ModuleType:
    """torchvision.transforms as far as torchreid's recipe uses it; ColorJitter (not in the recipe) raises."""
    module = _Absent("torchvision.transforms")
    module.Compose, module.Resize, module.RandomHorizontalFlip = _Compose, _Resize, _RandomHorizontalFlip
    module.ToTensor, module.Normalize = _ToTensor, _Normalize
    return module


def import_torchreid() -> ModuleType:
    """torchreid, with stand-ins for its unused imports that are not installed, present for the import alone."""
    if importlib.util.find_spec("torchreid") is None:
        sys.exit(f"bench/peer_training.py needs torchreid (bench-only): {INSTALL}")
    stand_ins: dict[str, ModuleType] = {}
    for name in UNUSED_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            stand_ins[name] = _Absent(name)
    if "torchvision" in stand_ins:
        stand_ins["torchvision.transforms"] = _pil_transforms()
    for name, module in stand_ins.items():  # `import a.b as c` reads b from a
        parent, _, child = name.rpartition(".")
        if parent in stand_ins:
            setattr(stand_ins[parent], child, module)
    sys.modules.update(stand_ins)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Cython evaluation")  # torchreid's own ranking: not used
            import torchreid
    finally:
        for name in stand_ins:
            del sys.modules[name]
    return torchreid


@dataclass(frozen=True)
class Splits:
    """Our trainer's carving of bounding_box_train: training crops, validation queries and gallery."""

    train: LabelledCrops
    query: LabelledCrops
    gallery: LabelledCrops


def carve(root: Path, val_identities: int, seed: int, train_identities: int | None) -> Splits:
    """The training identities and the validation query/gallery exactly as our trainer makes them: its functions on
    the same labels in the same order (the carving reads labels only, so each crop's index stands in for its
    pixels). `train_identities` keeps the first that many training identities (quick runs)."""
    crops = read_split(root, "train")
    labels = ImageSet(np.arange(len(crops)), np.array([c.person_id for c in crops]),
                      np.array([c.camera for c in crops]))
    train, val = hold_out_identities(labels, val_identities, seed)
    query, gallery = query_gallery_split(val, seed)
    if train_identities is not None:
        train = train.subset(np.isin(train.person_ids, np.unique(train.person_ids)[:train_identities]))

    def labelled(part: ImageSet) -> LabelledCrops:
        return LabelledCrops([crops[i].path for i in part.images], part.person_ids, part.cameras)

    return Splits(labelled(train), labelled(val.subset(query)), labelled(val.subset(gallery)))


def register_dataset(torchreid: ModuleType, splits: Splits) -> int:
    """Our splits as a torchreid image data set (training identities relabelled 0..N-1, 0-based cameras, the
    validation split as its query and gallery); returns the number of training identities."""
    labels = {pid: i for i, pid in enumerate(np.unique(splits.train.person_ids).tolist())}

    def items(split: LabelledCrops, relabel: bool) -> list[tuple[str, int, int]]:
        return [(str(path), labels[pid] if relabel else pid, cam - 1)
                for path, pid, cam in zip(split.paths, split.person_ids.tolist(), split.cameras.tolist(), strict=True)]

    train, query, gallery = items(splits.train, True), items(splits.query, False), items(splits.gallery, False)

    class GenreidSplit(torchreid.data.ImageDataset):
        """Market-1501's training identities less our validation identities."""

        def __init__(self, **kwargs: Any):
            super().__init__(train, query, gallery, **kwargs)

    torchreid.data.register_image_dataset(DATASET, GenreidSplit)
    return len(labels)


def softmax_engine(torchreid: ModuleType, datamanager: Any, model: torch.nn.Module, optimizer: Any,
                   scheduler: Any) -> Any:
    """torchreid's ImageSoftmaxEngine (label smoothing on), keeping each batch's loss and accuracy for the log."""

    class Engine(torchreid.engine.ImageSoftmaxEngine):
        batches: list[dict[str, float]]

        def forward_backward(self, data: dict[str, Any]) -> dict[str, float]:
            summary = super().forward_backward(data)
            self.batches.append(summary)
            return summary

    return Engine(datamanager, model, optimizer, scheduler=scheduler, use_gpu=False, label_smooth=True)


class _CropFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], transform: Any, read_image: Any):
        self.paths, self.transform, self.read_image = paths, transform, read_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.read_image(str(self.paths[index])))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the data loaders' workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def score(embed: Any, query: LabelledCrops, gallery: LabelledCrops) -> dict[str, Any]:
    """Standard-protocol metrics of `query` against `gallery` as `embed` embeds them, with the wall and CPU seconds
    that took."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    metrics = Evaluator(embed, query, gallery).metrics().as_dict()
    return metrics | {"seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(cpu_seconds() - cpu, 1)}


def read_log(path: Path, last_epoch: int) -> list[dict[str, Any]]:
    """log.jsonl's lines up to `last_epoch` (a line written after the last checkpoint is dropped: that epoch reruns)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in records if r["epoch"] <= last_epoch]
    if len(kept) < len(records):
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def check_config(out: Path, config: dict[str, Any]) -> None:
    """config.json of a new run; a resumed run must have been started with the same recipe and split."""
    path = out / "config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in RECIPE_FIELDS if old.get(k) != config[k]]
        if changed:
            differences = ", ".join(f"{k} {old.get(k)} (now {config[k]})" for k in changed)
            sys.exit(f"{out} was started with {differences}: give another --out, or the same arguments")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(path: Path, epoch: int, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "random": random.getstate()}
    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    os.replace(partial, path)  # a crash mid-write keeps the previous checkpoint


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> int:
    """Restore a run's last epoch; returns the number of epochs done (0 for a new run)."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["random"])
    return state["epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--data-root", type=Path, required=True, help="the official Market-1501 folder")
    parser.add_argument("--out", type=Path, required=True, help="the run directory (resumed when it exists)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=10, help="validation every this many epochs (and last)")
    parser.add_argument("--evaluate-only", action="store_true", help="score the last checkpoint; train nothing")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.0015)
    parser.add_argument("--stepsize", type=int, default=60, help="lr x0.1 every this many epochs")
    parser.add_argument("--val-identities", type=int, default=100, help="as the official run's val_identities")
    parser.add_argument("--split-seed", type=int, default=0, help="as the official run's split_seed")
    parser.add_argument("--seed", type=int, default=0, help="the network's initialisation and the sampling")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=1, help="data-loading worker processes")
    parser.add_argument("--print-freq", type=int, default=20, help="torchreid's progress line every N batches")
    args = parser.parse_args()
    args.train_identities = None
    if args.quick:  # the whole path at a toy size: 20 training identities, 2 epochs, one validation
        args.train_identities, args.epochs, args.eval_every, args.print_freq = 20, 2, 2, 1
    info = announced_machine()
    info["packages"]["torchreid"] = package_metadata.version("torchreid")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = check_layout(args.data_root)
    torchreid = import_torchreid()

    splits = carve(root, args.val_identities, args.split_seed, args.train_identities)
    config = {k: getattr(args, k) for k in RECIPE_FIELDS} | {"data_root": portable(root), "size": list(SIZE)}
    check_config(args.out, config)
    classes = register_dataset(torchreid, splits)
    datamanager = torchreid.data.ImageDataManager(
        root=str(root), sources=DATASET, height=SIZE[0], width=SIZE[1], transforms=["random_flip"], use_gpu=False,
        batch_size_train=args.batch, batch_size_test=TEST_BATCH, workers=args.workers, train_sampler="RandomSampler")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = torchreid.models.build_model("osnet_x0_25", classes, loss="softmax", pretrained=False, use_gpu=False)
    optimizer = torchreid.optim.build_optimizer(model, optim="amsgrad", lr=args.lr)
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, lr_scheduler="single_step", stepsize=args.stepsize)
    engine = softmax_engine(torchreid, datamanager, model, optimizer, scheduler)
    checkpoint, log_path = args.out / "checkpoint.pt", args.out / "log.jsonl"
    done = load_checkpoint(checkpoint, model, optimizer, scheduler)
    if args.evaluate_only and not done:
        sys.exit(f"{checkpoint}: no checkpoint to evaluate")
    log = read_log(log_path, done)

    def embed(split: LabelledCrops) -> np.ndarray:
        """The eval-mode network's features of a split's crops through torchreid's test transform."""
        loader = torch.utils.data.DataLoader(
            _CropFiles(split.paths, datamanager.transform_te, torchreid.utils.read_image), batch_size=TEST_BATCH,
            num_workers=args.workers)
        model.eval()
        with torch.inference_mode():
            return torch.cat([engine.extract_features(images) for images in loader]).numpy()

    print(f"{classes} training identities ({len(splits.train.paths)} crops), {args.val_identities} validation "
          f"identities ({len(splits.query.paths)} queries, {len(splits.gallery.paths)} gallery); "
          f"epoch {done} of {args.epochs} done")
    engine.max_epoch = args.epochs
    for epoch in range(done, done if args.evaluate_only else args.epochs):
        wall, cpu, lr = time.perf_counter(), cpu_seconds(), engine.get_current_lr()
        engine.epoch, engine.batches = epoch, []
        engine.train(print_freq=args.print_freq)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr, "loss": round(float(np.mean([b["loss"] for b in engine.batches])), 4),
            "acc": round(float(np.mean([b["acc"] for b in engine.batches])), 2),
            "seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(cpu_seconds() - cpu, 1),
            "load_1min": round(os.getloadavg()[0], 2)}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            record["validation"] = score(embed, splits.query, splits.gallery)
        print(json.dumps(record))
        with log_path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        save_checkpoint(checkpoint, epoch + 1, model, optimizer, scheduler)
        log.append(record)
        done = epoch + 1

    query, gallery = LabelledCrops.read(root, "query"), LabelledCrops.read(root, "gallery")
    if args.quick:  # every 10th crop: the path, not the number
        query, gallery = (LabelledCrops(s.paths[::10], s.person_ids[::10], s.cameras[::10]) for s in (query, gallery))
    test = score(embed, query, gallery)
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")},
               args.out / "osnet_x0_25.pt")
    curve = [{"epoch": r["epoch"], "loss": r["loss"]} | {k: r["validation"][k] for k in ("mAP", "rank1", "mINP")}
             for r in log if "validation" in r]
    results = {
        "model": "osnet_x0_25 from scratch (torchreid ImageSoftmaxEngine)", "input": list(SIZE),
        "recipe": {"optimizer": "amsgrad", "lr": args.lr, "weight_decay": 5e-4, "batch": args.batch,
                   "scheduler": f"single_step x0.1 every {args.stepsize}", "transforms": ["random_flip"],
                   "loss": "softmax, label smoothing 0.1"},
        "data": {"train_identities": classes, "train_crops": len(splits.train.paths),
                 "validation_identities": args.val_identities, "validation_queries": len(splits.query.paths),
                 "validation_gallery": len(splits.gallery.paths), "test_queries": len(query.paths),
                 "test_gallery": len(gallery.paths)},
        "epochs": done, "run": portable(args.out),
        "cpu_seconds": round(sum(r["cpu_seconds"] + r.get("validation", {}).get("cpu_seconds", 0) for r in log), 1),
        "wall_seconds": round(sum(r["seconds"] + r.get("validation", {}).get("seconds", 0) for r in log), 1),
        "median_seconds_per_epoch": float(np.median([r["seconds"] for r in log])) if log else None,
        "validation_curve": curve, "test": test, "protocol": "standard (genreid Evaluator), no re-ranking"}
    print_table("validation (standard protocol)", curve, ["epoch", "loss", "mAP", "rank1", "mINP"])
    print_table("official test (standard protocol)", [test], ["mAP", "rank1", "rank5", "rank10", "mINP", "queries",
                                                              "gallery", "seconds"])
    print(f"{done} epochs, {results['wall_seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU "
          f"(median {results['median_seconds_per_epoch']} s an epoch)")
    print(write_result("peer_training", args, info, results))


if __name__ == "__main__":
    main()
