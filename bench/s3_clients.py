"""s3:// job time with Beam's per-operation S3 clients against pairscore's shared ones.

    .venv/bin/python bench/s3_clients.py [--files 16] [--rows 200] [--repeats 2]

Starts a moto S3 server on 127.0.0.1, uploads a tiny model and FILES Parquet files of
pairs, then runs the same `pairscore score` job in fresh processes, alternating: "beam"
(Beam 2.77's own behaviour: a boto3 Session and client per file operation) and "shared"
(`model.storage`: one per process and setting). Prints each run and the ratio
beam / shared of the median wall times. No ../shared/data needed: the texts are synthetic
and the model is a tiny BiLSTM, so the job time is mostly storage round trips.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BUCKET = "bench"
# Run in the child: undo the sharing (the "beam" arm) before the job starts.
CHILD = """
import sys
from pipeline import io  # shares the clients on import
if sys.argv[1] == "beam":
    from apache_beam.io.aws.clients.s3 import boto3_client
    boto3_client.Client.__init__ = boto3_client.Client.__init__._pairscore_original
from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.tiny import export_tiny

    tmp = Path(tempfile.mkdtemp(prefix="s3bench-"))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        model = tmp / "model"
        export_tiny(str(model))
        for path in model.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), BUCKET, f"model/{path.relative_to(model)}")
        for f in range(args.files):
            ids = [f"f{f}-{i}" for i in range(args.rows)]
            table = pa.table({
                "pair_id": ids,
                "text_a": [f"how do i reset password number {i}" for i in range(args.rows)],
                "text_b": [f"reset my password {i % 7}" for i in range(args.rows)],
            })
            pq.write_table(table, tmp / "p.parquet")
            s3.upload_file(str(tmp / "p.parquet"), BUCKET, f"pairs/p{f:03d}.parquet")
        flags = [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
                 "--s3_secret_access_key=testing", "--s3_region_name=us-east-1"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        times: dict[str, list[float]] = {"beam": [], "shared": []}
        for r in range(args.repeats):
            for arm in ("beam", "shared"):
                argv = ["score", "--input", f"s3://{BUCKET}/pairs/*.parquet",
                        "--output", f"s3://{BUCKET}/out/{arm}-{r}",
                        "--model", f"s3://{BUCKET}/model", *flags]
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", CHILD, arm, *argv], cwd=REPO,
                                      env=env, capture_output=True, text=True)
                elapsed = time.perf_counter() - started
                if done.returncode != 0:
                    sys.exit(f"{arm} run failed:\n{done.stderr[-3000:]}")
                times[arm].append(elapsed)
                print(f"run {r} {arm:6s}: {elapsed:6.1f} s "
                      f"({args.files} files x {args.rows} rows)", flush=True)
        beam, shared = (statistics.median(times[a]) for a in ("beam", "shared"))
        print(f"median wall: beam {beam:.1f} s, shared {shared:.1f} s; "
              f"beam / shared = {beam / shared:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
