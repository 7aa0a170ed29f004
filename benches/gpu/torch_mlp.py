"""PyTorch eager's throughput for the MLP of the GPU check (256 -> 1024 -> ReLU -> 256, FP32), on the
same GPU and measured the way Accel is: inputs start on the host, outputs end on the host, one batch
at a time. Writes {"1": samples/s, "8": ..., "64": ..., "256": ...} to the file named first.

    python torch_mlp.py OUT.json [SECONDS]
"""

import json
import sys
import time

import torch


def main() -> None:
    out = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 as Accel computes it
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256)).cuda().eval()
    rates = {}
    with torch.inference_mode():
        for batch in (1, 8, 64, 256):
            x = torch.rand(batch, 256) * 2 - 1
            for _ in range(10):
                model(x.cuda()).cpu()
            torch.cuda.synchronize()
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model(x.cuda()).cpu()
                n += 1
            rates[str(batch)] = n * batch / (time.perf_counter() - start)
    with open(out, "w") as f:
        json.dump(rates, f)
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}: {rates}")


if __name__ == "__main__":
    main()
