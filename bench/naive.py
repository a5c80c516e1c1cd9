"""The obvious pipeline, as the source article and most tutorials write it, versus ours.

    python bench/naive.py [--pairs 4000] [--model minilm]

The obvious version (`run_naive`): `ReadFromParquet` (one Python dict per row) ->
tokenize each row on its own, padding every text to the model's max_length (128 for
MiniLM) -> stock
`BatchElements` inside RunInference (up to 256 rows, as our CPU batches) -> model ->
one dict per row -> `WriteToParquet` (per-row write). Same model, same runner
(in-process FnApiRunner), same input file; ours is `pipeline.job.run` in pair mode and
in the default `auto` mode. Both in fresh processes, timed from launch to finish; also
their steady state (minus each one's fixed cost: the same pipeline on 64 pairs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402


def run_naive(argv: list[str]) -> int:
    """Score `--input` into `--output` the obvious way; returns the rows written."""
    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.parquetio import ReadFromParquet, WriteToParquet
    from apache_beam.ml.inference.base import ModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--max-length", type=int, default=None, help="default: the model's")
    p.add_argument("--threshold", type=float, default=0.5)
    a = p.parse_args(argv)
    if a.max_length is None:
        import json

        a.max_length = json.loads(Path(a.model, "pairscore.json").read_text())["max_length"]

    class TokenizeRow(beam.DoFn):
        def setup(self):
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_file(f"{a.model}/assets/tokenizer.json")
            self.tok.enable_truncation(a.max_length)
            self.tok.enable_padding(length=a.max_length)

        def process(self, row):
            left = self.tok.encode(row["text_a"]).ids
            right = self.tok.encode(row["text_b"]).ids
            yield {"pair_id": row["pair_id"], "left": left, "right": right}

    class Handler(ModelHandler):
        def __init__(self):
            super().__init__(max_batch_size=256)

        def load_model(self):
            import tensorflow as tf
            import tensorflow_text  # noqa: F401  (the model's score_text needs its ops)

            return tf.saved_model.load(a.model).signatures["serving_default"]

        def run_inference(self, batch, model, inference_args=None):
            left = np.array([r["left"] for r in batch], dtype=np.int32)
            right = np.array([r["right"] for r in batch], dtype=np.int32)
            scores = model(left_ids=left, right_ids=right)["score"].numpy()
            return [{"pair_id": r["pair_id"], "score": float(s)} for r, s in zip(batch, scores)]

    schema = pa.schema([("pair_id", pa.string()), ("score", pa.float32()),
                        ("is_duplicate", pa.bool_())])
    options = PipelineOptions(
        runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner",
        direct_num_workers=1,
    )
    with beam.Pipeline(options=options) as pipe:
        _ = (
            pipe
            | "Read" >> ReadFromParquet(a.input)
            | "Tokenize" >> beam.ParDo(TokenizeRow())
            | "Score" >> RunInference(Handler())
            | "Label" >> beam.Map(lambda r: {**r, "is_duplicate": r["score"] >= a.threshold})
            | "Write" >> WriteToParquet(f"{a.output}/labels", schema, file_name_suffix=".parquet")
        )
    return sum(pq.ParquetFile(f).metadata.num_rows for f in Path(a.output).glob("labels*"))


def run(pairs: int, kind: str) -> dict:
    common.require_shared_data()
    model = common.ensure_model(kind)
    inp = common.write(common.real_pairs(pairs, seed=3), f"naive{pairs}.parquet")
    naive_out = common.WORK / "naive-out"
    if naive_out.exists():
        import shutil

        shutil.rmtree(naive_out)
    naive = common.measure("naive", "--input", inp, "--output", str(naive_out), "--model", model)
    ours = common.measure("job", *common.job_args(inp, str(common.WORK / "naive-ours"), model,
                                                  "--mode", "pairs"))
    tiny = common.write(common.real_pairs(64, seed=6), "naive-tiny.parquet")
    if naive_out.exists():
        import shutil

        shutil.rmtree(naive_out)
    naive_fixed = common.measure("naive", "--input", tiny, "--output", str(naive_out),
                                 "--model", model)
    ours_fixed = common.measure("job", *common.job_args(tiny, str(common.WORK / "naive-tiny"),
                                                        model, "--mode", "pairs"))
    auto = common.measure("job", *common.job_args(inp, str(common.WORK / "naive-auto"), model))
    assert naive["pairs"] == pairs, naive
    figures = {
        "command": f"python bench/naive.py --pairs {pairs} --model {kind}",
        "pairs": pairs,
        "naive": naive,
        "ours_pairs_mode": ours,
        "ours_auto_mode": auto,
        "speedup_wall": common.ratio(naive["wall_s"], ours["wall_s"]),
        "speedup_cpu": common.ratio(naive["cpu_s"], ours["cpu_s"]),
        "speedup_auto_wall": common.ratio(naive["wall_s"], auto["wall_s"]),
        "speedup_auto_cpu": common.ratio(naive["cpu_s"], auto["cpu_s"]),
        "naive_fixed": naive_fixed,
        "ours_fixed": ours_fixed,
        "speedup_steady_cpu": common.ratio(naive["cpu_s"] - naive_fixed["cpu_s"],
                                           ours["cpu_s"] - ours_fixed["cpu_s"]),
    }
    print(f"ours (pair mode) vs the obvious pipeline: {figures['speedup_wall']}x wall, "
          f"{figures['speedup_cpu']}x CPU; auto mode ({auto['mode']}): "
          f"{figures['speedup_auto_wall']}x wall, {figures['speedup_auto_cpu']}x CPU; steady "
          f"state {figures['speedup_steady_cpu']}x CPU", flush=True)
    return figures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--model", default="minilm")
    a = p.parse_args(argv)
    common.report("naive", run(a.pairs, a.model))


if __name__ == "__main__":
    main()
