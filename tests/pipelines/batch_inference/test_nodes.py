"""batch_inference's model URI, without Spark or a tracking store."""

import pytest

from malaria_pipeline.pipelines.batch_inference.nodes import describe_model


def test_a_run_uri_names_its_run_and_no_registered_version():
    assert describe_model("runs:/0a1b2c/model") == {
        "model_name": None,
        "model_version": None,
        "model_run_id": "0a1b2c",
    }


@pytest.mark.parametrize("uri", ["models:/m-0a1b2c", "models:/classifier/latest", "s3://bucket/model"])
def test_a_uri_that_names_no_version_or_run_is_refused_with_the_parameter(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"batch_inference.model_uri is '.*': give a registered model"):
        describe_model(uri)
    assert list(tmp_path.iterdir()) == []  # no tracking store was opened to refuse it


def test_batch_patients_is_empty_when_group_by_is_null_and_another_value_is_refused_by_name():
    from malaria_pipeline.assess.patients import PATIENT_COLUMNS
    from malaria_pipeline.pipelines.batch_inference.nodes import summarize_patients

    empty = summarize_patients(None, {"group_by": None})
    assert empty.empty and list(empty.columns) == PATIENT_COLUMNS
    with pytest.raises(
        ValueError, match=r"batch_inference.group_by is 'smear': give prefix .*, folder .* or null"
    ):
        summarize_patients(None, {"group_by": "smear"})
