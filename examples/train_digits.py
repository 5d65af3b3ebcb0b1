"""Example training job: a small PyTorch MLP on scikit-learn's bundled digits (8×8 images, 10 classes).

Runs on the GPUs gpuyard assigned (CUDA_VISIBLE_DEVICES) when there are real ones, else on the CPU.
Prints loss and accuracy each epoch, reports progress with gpuyard.report, and writes TensorBoard scalars
to $GPUYARD_TB_DIR when TensorBoard's writer is available. Nothing is downloaded.

With $GPUYARD_CHECKPOINT_DIR set (gpuyard sets it: one folder per job, kept across attempts) it saves a
checkpoint (model, optimizer, epoch) every few epochs and on SIGTERM, then exits, and it resumes from the
checkpoint when one is there: a preempted, cancelled-and-requeued or retried run picks up where it stopped.

    gpuyard submit --gpus 1 --name digits -- python examples/train_digits.py --epochs 20
    gpuyard submit --gpus 1 --preemptible -- python examples/train_digits.py --epochs 200 --epoch-sleep 1
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

try:
    from gpuyard import report
except ImportError:  # running outside gpuyard's environment: progress reports are simply skipped

    def report(**_: object) -> None:
        return None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch-sleep", type=float, default=0.0, help="Slow each epoch down (demos).")
    parser.add_argument("--checkpoint-every", type=int, default=5, help="Epochs between checkpoints.")
    return parser.parse_args()


class Checkpoints:
    """The job's checkpoint in $GPUYARD_CHECKPOINT_DIR (nothing is saved without it), and SIGTERM: the
    training loop asks `stop_requested` after each batch, saves, and exits."""

    def __init__(self) -> None:
        folder = os.environ.get("GPUYARD_CHECKPOINT_DIR")
        self.path = Path(folder) / "digits.pt" if folder else None
        self.stop_requested = False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """The last epoch done (0: none), with model and optimizer restored from the checkpoint."""
        if self.path is None or not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {self.path} after epoch {state['epoch']}", flush=True)
        return int(state["epoch"])

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, tmp)
        os.replace(tmp, self.path)  # a stop in the middle never leaves half a checkpoint
        print(f"checkpoint saved after epoch {epoch}", flush=True)

    def stop(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Stopped (preempted, cancelled): keep what is done, and go."""
        self.save(model, optimizer, epoch)
        print(f"stopped by SIGTERM after epoch {epoch}", flush=True)
        sys.exit(143)


def tensorboard_writer():  # type: ignore[no-untyped-def]
    tb_dir = os.environ.get("GPUYARD_TB_DIR")
    if not tb_dir:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(tb_dir)


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(not set)")
    print(
        f"device={device} CUDA_VISIBLE_DEVICES={visible} job={os.environ.get('GPUYARD_JOB_ID', '-')}",
        flush=True,
    )

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=args.seed, stratify=y
    )
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))

    model = nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    writer = tensorboard_writer()
    checkpoints = Checkpoints()
    done = checkpoints.load(model, optimizer)
    accuracy = float("nan")

    for epoch in range(done + 1, args.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_train), device=device)
        total_loss = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            if checkpoints.stop_requested:
                checkpoints.stop(model, optimizer, epoch - 1)
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
        train_loss = total_loss / len(x_train)
        print(
            f"epoch {epoch}/{args.epochs} loss={train_loss:.4f} accuracy={accuracy:.4f} "
            f"({time.perf_counter() - started:.2f}s)",
            flush=True,
        )
        report(step=epoch, total=args.epochs, loss=train_loss, accuracy=accuracy)
        if writer is not None:
            writer.add_scalar("loss/train", train_loss, epoch)
            writer.add_scalar("accuracy/test", accuracy, epoch)
        if epoch % args.checkpoint_every == 0 or epoch == args.epochs:
            checkpoints.save(model, optimizer, epoch)
        if args.epoch_sleep:
            time.sleep(args.epoch_sleep)
        if checkpoints.stop_requested:
            checkpoints.stop(model, optimizer, epoch)
    if writer is not None:
        writer.close()
    print(f"final accuracy={accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
