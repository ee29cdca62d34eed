"""Train the small digits CNN used by the compression accuracy checks.

scikit-learn's bundled ``load_digits`` (1,797 8x8 images, no download), split with a
fixed seed into 1,437 training and 360 held-out images (``digits_split`` below, shared
with the tests). A 4-conv CNN is trained with PyTorch (CPU) and exported to
``tests/data/digits_cnn.onnx`` (opset 17, batch dimension dynamic).

    .venv/bin/pip install torch==2.13.0   # not a runtime dependency of hwcomp
    .venv/bin/python bench/train_digits.py
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.digits import digits_split  # noqa: E402


def main() -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = digits_split()
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(40):
        model.train()
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
        if epoch % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}, held-out top-1 {accuracy:.4f}")
    model.eval()
    out = REPO / "tests" / "data" / "digits_cnn.onnx"
    torch.onnx.export(model, torch.from_numpy(x_test[:1]), str(out), input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                      opset_version=17, dynamo=False)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"wrote {out} ({out.stat().st_size} bytes), held-out top-1 {accuracy:.4f}")


if __name__ == "__main__":
    main()
