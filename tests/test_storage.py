"""Input, model and output in object storage, for real: gs:// through the GCS emulator
(PyPI gcp-storage-emulator) and s3:// through moto's server, each started here on
127.0.0.1 and stopped after.

`pairscore score` reads the pairs and the model from the bucket and writes labels,
rejects, summary.json and _SUCCESS there. The test arranges and checks the bucket with
the storage clients directly (google-cloud-storage, boto3), not through the code under
test, and compares the scores with the same model scoring the same texts locally.
"""

import contextlib
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from tests.conftest import PAIRS, REPO, write_pairs

BUCKET = "pairscore-test"
# Rows the job must reject, with the reason it must give.
BAD_ROWS = [("bad1", None, "no left text"), ("bad2", "", "empty left text")]
BAD_REASONS = {"bad1": "null_text", "bad2": "empty_text"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(argv: list[str], port: int, log: pathlib.Path):
    """Start a server process, wait until it accepts connections, stop it after."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{argv[2]} exited with {proc.returncode}:\n{log.read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.time() > deadline:
                pytest.fail(f"{argv[2]} did not listen on {port} in 60 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class GcsBucket:
    scheme = "gs"

    def __init__(self, endpoint: str, tmp: pathlib.Path):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.endpoint = endpoint
        client = storage.Client(
            project="pairscore-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
        self.bucket = client.bucket(BUCKET)
        self.client = client
        # Beam asks google.auth for credentials before it falls back to an anonymous
        # client, and retries that lookup for about 30 s when there are none. A token
        # that is already valid needs no refresh, so no request leaves the machine; the
        # emulator ignores it.
        self.adc = tmp / "adc.json"
        self.adc.write_text(json.dumps({
            "type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
            "refresh_token": "emulator", "token": "emulator", "expiry": "2999-01-01T00:00:00Z",
        }))

    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.adc),
            "GOOGLE_CLOUD_PROJECT": "pairscore-test",
        }

    def flags(self) -> list[str]:
        return []

    def put(self, key: str, path: pathlib.Path) -> None:
        self.bucket.blob(key).upload_from_filename(str(path))

    def get(self, key: str) -> bytes:
        return self.bucket.blob(key).download_as_bytes()

    def keys(self, prefix: str) -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(BUCKET, prefix=prefix))


class S3Bucket:
    scheme = "s3"

    def __init__(self, endpoint: str, tmp: pathlib.Path):
        import boto3

        self.endpoint = endpoint
        self.s3 = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        self.s3.create_bucket(Bucket=BUCKET)

    def env(self) -> dict[str, str]:
        return {}

    def flags(self) -> list[str]:
        # Beam's S3 options; the launcher and the workers both read them.
        return [
            f"--s3_endpoint_url={self.endpoint}",
            "--s3_access_key_id=testing",
            "--s3_secret_access_key=testing",
            "--s3_region_name=us-east-1",
        ]

    def put(self, key: str, path: pathlib.Path) -> None:
        self.s3.upload_file(str(path), BUCKET, key)

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gcs")
    port = _free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
            "--port", str(port), "--in-memory", "--default-bucket", BUCKET]
    with _server(argv, port, tmp / "server.log") as endpoint:
        yield GcsBucket(endpoint, tmp)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3")
    port = _free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _server(argv, port, tmp / "server.log") as endpoint:
        yield S3Bucket(endpoint, tmp)


@pytest.fixture(params=["gcs", "s3"])
def bucket(request):
    return request.getfixturevalue(request.param)


def _stage(bucket, model_dir: str, tmp: pathlib.Path, prefix: str) -> dict[str, str]:
    """Upload the model dir and two Parquet files of pairs; return the job's URLs."""
    base = f"{bucket.scheme}://{BUCKET}/{prefix}"
    for path in sorted(pathlib.Path(model_dir).rglob("*")):
        if path.is_file():
            bucket.put(f"{prefix}/model/{path.relative_to(model_dir).as_posix()}", path)
    rows = PAIRS + BAD_ROWS
    halves = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    for i, part in enumerate(halves):
        write_pairs(tmp / f"part-{i}.parquet", part)
        bucket.put(f"{prefix}/pairs/part-{i}.parquet", tmp / f"part-{i}.parquet")
    return {
        "input": f"{base}/pairs/*.parquet",
        "model": f"{base}/model",
        "output": f"{base}/out",
    }


def _parquet(bucket, keys: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(io.BytesIO(bucket.get(k))) for k in keys])


def _check_output(bucket, prefix: str, urls: dict[str, str], model_dir: str) -> dict:
    keys = bucket.keys(f"{prefix}/out/")
    labels = [k for k in keys if k.startswith(f"{prefix}/out/labels/") and k.endswith(".parquet")]
    rejects = [k for k in keys if k.startswith(f"{prefix}/out/rejects/")
               and k.endswith(".parquet")]
    assert labels and rejects, keys
    assert f"{prefix}/out/summary.json" in keys and f"{prefix}/out/_SUCCESS" in keys, keys
    assert not [k for k in keys if "/_staging/" in k], "staged files left behind"
    assert f"{prefix}/out/_RUN.json" not in keys, "the run marker was not released"

    from model.predict import Scorer

    good = {pid: (a, b) for pid, a, b in PAIRS}
    table = _parquet(bucket, labels).sort_by("pair_id")
    ids = table["pair_id"].to_pylist()
    assert ids == sorted(good)
    local = Scorer(model_dir)
    expected = local.score([good[i][0] for i in ids], [good[i][1] for i in ids])
    scores = table["score"].to_numpy()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    threshold = local.metadata.threshold
    assert table["is_duplicate"].to_pylist() == [bool(s >= threshold) for s in scores]

    rejected = _parquet(bucket, rejects).to_pydict()
    assert dict(zip(rejected["pair_id"], rejected["reason"])) == BAD_REASONS

    summary = json.loads(bucket.get(f"{prefix}/out/summary.json"))
    assert summary["rows_in"] == len(PAIRS) + len(BAD_ROWS)
    assert summary["scored"] == len(PAIRS) and summary["rejected"] == len(BAD_ROWS)
    assert summary["invariant_holds"] is True
    assert summary["model"] == urls["model"]
    # The two files the glob matched at launch, with their rows (9 rows cut in halves).
    assert [f["rows"] for f in summary["input_files"]] == [4, 5]
    assert summary["input_files"][0]["path"] == f"{urls['input'][:-len('*.parquet')]}part-0.parquet"
    assert "counters" not in summary  # Beam's counters are the launcher's, not the job's
    return summary


def _argv(urls: dict[str, str], bucket) -> list[str]:
    return ["score", "--input", urls["input"], "--output", urls["output"],
            "--model", urls["model"], *bucket.flags()]


def test_score_reads_and_writes_the_bucket(bucket, bilstm_model, tmp_path, monkeypatch, capsys):
    for name, value in bucket.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"inproc-{bucket.scheme}"
    urls = _stage(bucket, bilstm_model, tmp_path, prefix)

    started = time.perf_counter()
    assert cli.main(_argv(urls, bucket)) == 0
    elapsed = time.perf_counter() - started
    summary = _check_output(bucket, prefix, urls, bilstm_model)
    with capsys.disabled():
        print(f"\n{bucket.scheme}://: {summary['rows_in']} rows, scored {summary['scored']}, "
              f"rejected {summary['rejected']}, command {elapsed:.1f}s, "
              f"job {summary['elapsed_s']}s")

    # A finished run is refused without --overwrite, which means _SUCCESS was seen there.
    capsys.readouterr()
    assert cli.main(_argv(urls, bucket)) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_missing_model_in_bucket_is_named(bucket, tmp_path, monkeypatch, capsys):
    for name, value in bucket.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"nomodel-{bucket.scheme}"
    write_pairs(tmp_path / "p.parquet", PAIRS[:2])
    bucket.put(f"{prefix}/pairs/p.parquet", tmp_path / "p.parquet")
    base = f"{bucket.scheme}://{BUCKET}/{prefix}"
    argv = ["score", "--input", f"{base}/pairs/*.parquet", "--output", f"{base}/out",
            "--model", f"{base}/no-such-model", *bucket.flags()]
    assert cli.main(argv) == 2
    assert f"model directory {base}/no-such-model does not exist" in capsys.readouterr().err
    assert bucket.keys(f"{prefix}/out/") == []


@pytest.mark.slow
def test_console_script_in_a_fresh_process(bucket, bilstm_model, tmp_path):
    """The installed `pairscore` command, configured only by its flags and environment."""
    prefix = f"cli-{bucket.scheme}"
    urls = _stage(bucket, bilstm_model, tmp_path, prefix)
    env = {**os.environ, **bucket.env()}
    exe = pathlib.Path(sys.executable).with_name("pairscore")
    done = subprocess.run([str(exe), *_argv(urls, bucket)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_output(bucket, prefix, urls, bilstm_model)


def test_s3_file_operations_share_one_client(s3, tmp_path, monkeypatch):
    """Beam builds a boto3 Session per S3 operation; pairscore shares one client per
    process and setting, and concurrent downloads still read their own bytes."""
    import concurrent.futures

    import boto3
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import io as pio  # noqa: F401  (importing it shares the clients)

    blobs = {f"share/f{i}.bin": os.urandom(200_000 + i) for i in range(6)}
    for key, data in blobs.items():
        (tmp_path / "blob").write_bytes(data)
        s3.put(key, tmp_path / "blob")
    sessions = []
    real_session = boto3.session.Session

    def counting_session(*args, **kwargs):
        sessions.append(1)
        return real_session(*args, **kwargs)

    monkeypatch.setattr(boto3.session, "Session", counting_session)
    # A fresh endpoint spelling, so no client of an earlier test is reused.
    FileSystems.set_options(PipelineOptions(
        [*s3.flags(), f"--s3_endpoint_url={s3.endpoint}/"]
    ))
    urls = [f"s3://{BUCKET}/{key}" for key in blobs]

    def read(url):
        assert FileSystems.exists(url)
        with FileSystems.open(url, compression_type="uncompressed") as f:
            return url, f.read()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = dict(pool.map(read, urls * 3))
    listed = FileSystems.match([f"s3://{BUCKET}/share/*"])[0].metadata_list
    assert {m.path: m.size_in_bytes for m in listed} == {
        url: len(data) for url, data in zip(urls, blobs.values(), strict=True)
    }
    assert got == {url: data for url, data in zip(urls, blobs.values(), strict=True)}
    # 18 exists, 18 opens and a match: one Session, not one per operation.
    assert len(sessions) == 1


# ModelDir over object storage: `pairscore evaluate` with the model in the bucket, and
# the manifest checked there without downloading the model.

SHARD = "variables/variables.data-00000-of-00001"
LABELS = [1, 1, 0, 1, 0, 0, 1]


@pytest.fixture
def fresh_filesystems(bucket, monkeypatch):
    return _fresh_filesystems(bucket, monkeypatch)


def _fresh_filesystems(bucket, monkeypatch):
    """The storage as a new `pairscore evaluate` process sees it: no Beam options set
    (earlier tests in this process set some), configured by the environment only."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.value_provider import RuntimeValueProvider

    monkeypatch.setattr(FileSystems, "_pipeline_options", None)
    monkeypatch.setattr(RuntimeValueProvider, "runtime_options", None)
    env = dict(bucket.env())
    if bucket.scheme == "s3":
        env.update(AWS_ENDPOINT_URL=bucket.endpoint, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return bucket


def _labelled(tmp: pathlib.Path) -> str:
    path = tmp / "labelled.parquet"
    write_pairs(path, PAIRS, label=pa.array(LABELS, pa.int64()))
    return str(path)


def _evaluate_cli(capsys, model: str, data: str) -> dict:
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", model, "--data", data]) == 0
    return json.loads(capsys.readouterr().out)


def _tamper(bucket, key: str, model_dir: str, tmp: pathlib.Path) -> None:
    """Replace one object by the same number of bytes, one of them changed."""
    data = bytearray(pathlib.Path(model_dir, key.split("/model/", 1)[1]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp / "tampered").write_bytes(bytes(data))
    bucket.put(key, tmp / "tampered")


def test_evaluate_reads_the_model_from_the_bucket(fresh_filesystems, bilstm_model, tmp_path,
                                                  capsys):
    bucket = fresh_filesystems
    prefix = f"evaluate-{bucket.scheme}"
    urls = _stage(bucket, bilstm_model, tmp_path, prefix)
    data = _labelled(tmp_path)
    started = time.perf_counter()
    remote = _evaluate_cli(capsys, urls["model"], data)
    elapsed = time.perf_counter() - started
    local = _evaluate_cli(capsys, bilstm_model, data)
    assert remote.pop("model") == urls["model"] and local.pop("model") == bilstm_model
    assert remote["n"] == len(PAIRS) and "f1" in remote
    assert remote == local
    with capsys.disabled():
        print(f"\nevaluate --model {bucket.scheme}://: {elapsed:.1f}s")


def test_tampered_object_in_the_bucket_is_refused(fresh_filesystems, bilstm_model, tmp_path):
    from model.config import ModelDirError
    from model.evaluate import evaluate

    bucket = fresh_filesystems
    prefix = f"tampered-{bucket.scheme}"
    urls = _stage(bucket, bilstm_model, tmp_path, prefix)
    _tamper(bucket, f"{prefix}/model/{SHARD}", bilstm_model, tmp_path)
    with pytest.raises(ModelDirError) as err:
        evaluate(urls["model"], _labelled(tmp_path))
    message = str(err.value)
    # Same size, so only the content check can see it: gs:// from the object's crc32c,
    # s3:// by hashing the bytes (the ETag, the md5 of what is there, is not the manifest's).
    check = "crc32c" if bucket.scheme == "gs" else "sha256"
    assert f"{urls['model']}/{SHARD}: {check} " in message, message
    assert "saved_model.pb" not in message and "tokenizer" not in message


def test_bucket_copy_is_checked_as_it_is_written(fresh_filesystems, bilstm_model, tmp_path):
    """An object replaced after the check (a model overwritten under a running job) is
    caught while the local copy TensorFlow loads is written."""
    from model.config import ModelDirError
    from model.modeldir import ModelDir

    bucket = fresh_filesystems
    prefix = f"copy-{bucket.scheme}"
    urls = _stage(bucket, bilstm_model, tmp_path, prefix)
    md = ModelDir.open(urls["model"])
    _tamper(bucket, f"{prefix}/model/{SHARD}", bilstm_model, tmp_path)
    with pytest.raises(ModelDirError, match=f"{urls['model']}/{SHARD}: read .* sha256"):
        md.local_path()


def test_bucket_check_downloads_nothing_but_the_metadata(fresh_filesystems, bilstm_model,
                                                         tmp_path, monkeypatch):
    """gs:// (crc32c) and s3:// single-part uploads (ETag) are checked from object
    metadata: the only file opened is pairscore.json, until the model is copied."""
    from apache_beam.io.filesystems import FileSystems

    from model.modeldir import ModelDir

    bucket = fresh_filesystems
    prefix = f"nodownload-{bucket.scheme}"
    urls = _stage(bucket, bilstm_model, tmp_path, prefix)
    opened = []
    real_open = FileSystems.open

    def counting_open(path, *args, **kwargs):
        opened.append(path.removeprefix(urls["model"] + "/"))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(FileSystems, "open", counting_open)
    md = ModelDir.open(urls["model"])
    assert opened == ["pairscore.json"]
    # The counter sees downloads when there are some.
    md.local_path()
    assert SHARD in opened and len(opened) == 1 + len(md.files)


def test_gcs_check_reads_no_object_says_the_server(gcs, bilstm_model, tmp_path, monkeypatch):
    """The GCS emulator's own request log, outside this process: opening the model asks
    for object metadata only, no object's bytes but pairscore.json's."""
    import urllib.parse

    from model.modeldir import ModelDir

    bucket = _fresh_filesystems(gcs, monkeypatch)
    prefix = "serverlog-gs"
    urls = _stage(bucket, bilstm_model, tmp_path, prefix)
    log = bucket.adc.parent / "server.log"

    def media_requests(since: int) -> tuple[list[str], int]:
        lines = log.read_text(errors="replace").splitlines()
        media = [urllib.parse.unquote(line) for line in lines[since:] if "alt=media" in line]
        return media, len(lines)

    _, start = media_requests(0)
    md = ModelDir.open(urls["model"])
    during, mark = media_requests(start)
    assert len(during) == 1 and f"/o/{prefix}/model/pairscore.json?" in during[0], during
    # The same log shows the bytes when they are fetched: the copy TensorFlow loads.
    md.local_path()
    copied, _ = media_requests(mark)
    assert any(f"/o/{prefix}/model/{SHARD}?" in line for line in copied), copied
