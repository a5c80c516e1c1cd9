"""`pairscore score` refuses a flag that neither pairscore nor any Beam options class
defines, instead of Beam's "Discarding unparseable args" warning and a run with the
defaults."""

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import profiles
from pipeline.io import JobError
from pipeline.options import ScoreOptions, check_known_flags, known_flags

BASE = ["--input", "in/*.parquet", "--output", "out", "--model", "models/m"]


def test_misspelt_flag_is_refused_naming_the_right_one():
    with pytest.raises(JobError, match=r"^unknown flag --treshold; did you mean --threshold\?$"):
        check_known_flags([*BASE, "--treshold", "0.99"])
    with pytest.raises(JobError, match=r"^unknown flag --treshold; did you mean --threshold\?$"):
        check_known_flags([*BASE, "--treshold=0.99"])


def test_misspelt_beam_flag_is_refused_naming_beams():
    with pytest.raises(JobError, match=r"unknown flag --direct_num_worker; did you mean "
                                       r"--direct_num_workers\?"):
        check_known_flags([*BASE, "--direct_num_worker", "2"])


def test_abbreviations_are_not_flags():
    """Beam parses with allow_abbrev=False: argparse would otherwise take --thresh."""
    with pytest.raises(JobError, match=r"unknown flag --thresh; did you mean --threshold\?"):
        check_known_flags([*BASE, "--thresh", "0.5"])


def test_every_problem_is_named():
    with pytest.raises(JobError) as err:
        check_known_flags(["--id_colum", "key", "stray", *BASE, "--qqqqzzzz", "value"])
    assert str(err.value) == (
        "unknown flag --id_colum; did you mean --id_column?; "
        "unexpected argument 'stray': every option is --flag value or --flag=value; "
        "unknown flag --qqqqzzzz"
    )


@pytest.mark.parametrize("argv", [
    ["stray"],
    ["--threshold", "0.5", "0.7"],
    ["--overwrite", "yes"],
    ["--input=a", "b"],
])
def test_stray_positional_is_refused(argv):
    with pytest.raises(JobError, match=r"unexpected argument '(stray|0\.7|yes|b)'"):
        check_known_flags([*BASE, *argv])


@pytest.mark.parametrize("argv", [
    ["--direct_num_workers", "2"],
    ["--temp_location", "x"],
    ["--temp_location=gs://bucket/tmp"],
    ["--s3_endpoint_url=http://127.0.0.1:9000", "--s3_access_key_id", "k",
     "--s3_secret_access_key=s", "--s3_region_name", "us-east-1"],
    ["--runner", "DataflowRunner", "--project", "p", "--region", "r",
     "--experiments=use_runner_v2", "--experiment", "no_use_multiple_sdk_containers",
     "--sdk_container_image", "img", "--dataflow_service_options=a=b", "--dry_run=True"],
    ["--threshold=0.5", "--threshold", "0.6", "--threshold", "-0.5"],
    ["--id-column", "k", "--id_column=k", "--keep-columns", "a,b", "--overwrite"],
    ["--max-model-error-ratio", "0", "--max_model_error_ratio=0.01"],
    ["--stale-run-after", "60", "--stale_run_after=0"],
    ["--mode", "unique", "--unique-join", "shuffle", "--precision", "bfloat16"],
    ["--help"],
])
def test_pairscore_and_beam_flags_are_accepted(argv):
    check_known_flags([*BASE, *argv])


def test_a_profiles_flags_are_all_known():
    argv = [*BASE, "--profile", "dataflow-gpu", "--project", "p", "--region", "r",
            "--temp_location", "gs://b/tmp", "--sdk_container_image", "img"]
    check_known_flags(argv)
    expanded = profiles.expand(argv)
    assert len(expanded) > len(argv)
    check_known_flags(expanded)


def test_bad_values_are_errors_not_exits():
    with pytest.raises(JobError, match=r"argument --threshold: invalid float value: 'high'"):
        check_known_flags([*BASE, "--threshold", "high"])
    with pytest.raises(JobError, match=r"argument --device: invalid choice: 'tpu'"):
        check_known_flags([*BASE, "--device", "tpu"])
    with pytest.raises(JobError, match=r"argument --threshold: expected one argument"):
        check_known_flags([*BASE, "--threshold"])


def test_options_classes_defined_later_are_known():
    """Every PipelineOptions subclass counts, as in Beam, including one defined after
    pairscore's (a runner's or a user's), found when the check runs."""
    with pytest.raises(JobError):
        check_known_flags(["--pairscore_test_only_flag", "1"])

    class LateOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument("--pairscore_test_only_flag")

    check_known_flags(["--pairscore_test_only_flag", "1"])
    assert "--pairscore_test_only_flag" in known_flags()


def test_known_flags_hold_pairscores_and_beams():
    flags = set(known_flags())
    assert {"--threshold", "--stale-run-after", "--max-model-error-ratio", "--runner",
            "--temp_location", "--s3_endpoint_url", "--direct_num_workers"} <= flags
    assert "--test-fail-once" not in flags and "--test_fail_once" not in flags


def test_score_options_defaults_and_new_flags():
    opts = PipelineOptions([]).view_as(ScoreOptions)
    assert opts.max_model_error_ratio == 0.001
    assert opts.stale_run_after == 86400
    assert opts.mode == "auto" and opts.threshold is None
    assert not hasattr(opts, "test_fail_once")
    opts = PipelineOptions(["--max-model-error-ratio", "0", "--stale-run-after=60"]).view_as(
        ScoreOptions
    )
    assert opts.max_model_error_ratio == 0.0 and opts.stale_run_after == 60.0


def test_beam_still_collects_every_options_class():
    """One ScoreOptions registered: two copies of a flag would make Beam's own
    get_all_options (run by Pipeline.run) fail with a conflicting option string."""
    options = PipelineOptions([*BASE, "--threshold", "0.7", "--direct_num_workers", "2"])
    everything = options.get_all_options()
    assert everything["threshold"] == 0.7 and everything["direct_num_workers"] == 2
