"""`agentrun render`: the operator's objects for a manifest, without a cluster; bad input is a clear error."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from agentrun_operator.cli import main

pytestmark = pytest.mark.unit

GOOD = """
apiVersion: agentrun.dev/v1alpha1
kind: AgentRun
metadata: {name: q3, namespace: team-a}
spec:
  instructions: You are a researcher.
  input: Compare the vendors.
  model: {name: gpt-4.1-mini, apiKeySecretRef: {name: openai, key: api-key}}
  maxExecutionTime: 30m
  maxIterations: 50
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_render_prints_every_child_as_valid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", write(tmp_path, GOOD)]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    assert "Job/q3-runner" in kinds
    assert "Secret/q3-stream-token" in kinds
    assert "Secret/q3-permit-key" in kinds
    assert len(kinds) == 9
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


def test_render_never_prints_a_real_stream_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["render", "-f", write(tmp_path, GOOD)])
    secrets = [o for o in yaml.safe_load_all(capsys.readouterr().out) if o["kind"] == "Secret"]
    assert [list(secret["stringData"].values()) for secret in secrets] == [
        ["generated-by-the-operator-at-creation"]
    ] * 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("maxIterations: 50", "maxIterations: 0"), "spec.maxIterations"),
        (GOOD.replace("maxExecutionTime: 30m", "maxExecutionTime: 30 minutes"), "spec.maxExecutionTime"),
        (GOOD.replace("gpt-4.1-mini,", "gpt-4.1-mini, colour: blue,"), "spec.model.colour"),
        (GOOD.replace("kind: AgentRun", "kind: Pod"), "apiVersion/kind must be"),
        ("key: [unclosed", "not valid YAML"),
        (GOOD.replace("name: q3,", f"name: {'x' * 60},"), "metadata.name"),
    ],
)
def test_bad_manifest_exits_1_with_a_field_named_error_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    assert main(["render", "-f", write(tmp_path, text)]) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(tmp_path / "absent.yaml")]) == 1
    assert "absent.yaml" in capsys.readouterr().err


def test_a_top_level_field_outside_the_api_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", write(tmp_path, GOOD + "spek: {}\n")]) == 1
    assert "unknown field spek" in capsys.readouterr().err


def test_errors_come_from_the_models_naming_the_field_and_what_it_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("maxExecutionTime: 30m", "maxExecutionTime: 169h")
    assert main(["render", "-f", write(tmp_path, text)]) == 1
    assert capsys.readouterr().err == (
        "error: AgentRun q3: spec.maxExecutionTime: Value error, '169h' is longer than the maximum of 168h\n"
    )


def test_kubeconfig_flags_need_server_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["render", "-f", write(tmp_path, GOOD), "--kubeconfig", str(tmp_path / "config")])
    assert exited.value.code == 2
    assert "--kubeconfig and --context apply only with --server-dry-run" in capsys.readouterr().err


def test_server_dry_run_without_a_usable_kubeconfig_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    code = main(["render", "-f", write(tmp_path, GOOD), "--server-dry-run", "--kubeconfig", str(config)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith("error: --server-dry-run: cannot load the kubeconfig: ")
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_render_refuses_a_run_the_operators_policy_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AGENTRUN_POLICY_* variables the operator has: what it would refuse, render shows no objects for."""
    monkeypatch.setenv("AGENTRUN_POLICY_ALLOWED_MODEL_HOSTS", "models.example.com")
    assert main(["render", "-f", write(tmp_path, GOOD)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: AgentRun q3: PolicyViolation: spec.model.baseURL: host 'api.openai.com'")
    assert "models.example.com" in captured.err
