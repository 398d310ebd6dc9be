"""``validate``: one line per method, OK only after schema, adapter, models and a smoke run."""

from __future__ import annotations

from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "my_method.yaml"


def entry(tmp_path, text, name="sub.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_submission_passes(cli):
    code, out, err = cli("validate", "--extra-registry", EXAMPLE)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("OK   ensemble-example:")
    assert "4 model(s) hash-checked" in out and "smoke 2 images on digits" in out
    assert "counts unchanged at batch 7 and another global seed" in out


def test_bad_adapter_fails_naming_the_entry(cli, tmp_path):
    bad = entry(tmp_path, "methods:\n  broken:\n    adapter: examples.ensemble:Nope\n")
    code, _, out = cli("validate", "--extra-registry", bad, "--no-smoke")
    assert code == 2
    assert out.startswith("FAIL broken:") and "methods.broken.adapter" in out
    assert "has no class 'Nope'" in out


def test_schema_error_names_file_entry_and_field(cli, tmp_path):
    bad = entry(tmp_path, "methods:\n  typo:\n    adapter: examples.ensemble:SoftmaxEnsemble\n"
                          "    parms: {weight: 0.5}\n")
    code, _, out = cli("validate", "--extra-registry", bad)
    assert code == 2
    assert out.startswith("FAIL registry:") and "methods.typo.parms: unknown field" in out
    assert "did you mean 'params'" in out and str(bad) in out


def test_hash_mismatch_fails(cli, tmp_path):
    text = EXAMPLE.read_text().replace("ensemble-example:", "tampered:")
    text = ("models:\n  wrong-hash:\n    arch: digits_cnn\n    source: zoo\n"
            "    path: digits-cnn-gaussian-0.25.safetensors\n    sha256: " + "ab" * 32 + "\n"
            + text.replace("partner: {0.25: digits-cnn-gaussian-0.5",
                           "partner: {0.25: wrong-hash"))
    code, _, out = cli("validate", "--extra-registry", entry(tmp_path, text), "--no-smoke")
    assert code == 2
    assert out.startswith("FAIL tampered:") and "models.wrong-hash.sha256" in out
    assert "methods.tampered.datasets.digits.partner" in out


def test_param_outside_its_declared_range_names_file_entry_and_field(cli, tmp_path):
    # The example declares weight as a float in [0, 1]: checked before anything is built.
    text = EXAMPLE.read_text().replace("ensemble-example:", "outside:").replace(
        "params: {weight: 0.5}", "params: {weight: 3}")
    sub = entry(tmp_path, text)
    code, _, out = cli("validate", "--extra-registry", sub)
    assert code == 2 and out.startswith("FAIL outside:")
    assert f"{sub}: methods.outside.params.weight: expected float in [0, 1], got 3" in out


CRASHY = '''from bench.contract import Method


class Crashy(Method):
    def base_classifier(self, ctx):
        raise RuntimeError("adapter bug")
'''


def test_adapter_crash_in_smoke_run_is_a_fail_line(cli, tmp_path, monkeypatch):
    (tmp_path / "crashy_adapter.py").write_text(CRASHY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sub = entry(tmp_path, "methods:\n  crashy:\n    adapter: crashy_adapter:Crashy\n")
    code, _, out = cli("validate", "--extra-registry", sub)
    assert code == 2 and out.startswith("FAIL crashy:")
    assert "RuntimeError: adapter bug" in out


def test_reported_only_method_says_it_has_no_adapter(cli, tmp_path):
    code, out, _ = cli("validate", "--method", "smoothmix", "--method", "boosting")
    assert code == 0
    assert out.count("reported-only, no adapter") == 2
    code, _, err = cli("run", "--method", "boosting", "--results", tmp_path)
    assert code == 2 and "reported-only (no adapter)" in err
    bad = entry(tmp_path, "methods:\n  empty:\n    description: nothing to show\n")
    code, _, out = cli("validate", "--extra-registry", bad)
    assert code == 2 and "methods.empty.adapter: missing" in out


COUPLED = '''import torch

from bench.contract import Method


class Linear:
    """A fixed random linear classifier; subclasses break it in one way each."""

    def __init__(self, ctx):
        self.num_classes = ctx.dataset.num_classes
        dim = 1
        for d in ctx.dataset.shape:
            dim *= d
        self.w = torch.randn(dim, self.num_classes, generator=torch.Generator().manual_seed(0))

    def __call__(self, x):
        return x.flatten(1) @ self.w


class BatchMean(Linear):
    def __call__(self, x):  # a batch-wide statistic: each output depends on the whole batch
        z = x.flatten(1)
        return (z - z.mean(0)) @ self.w


class GlobalRandom(Linear):
    def __call__(self, x):  # extra noise from torch's global generator
        return super().__call__(x + torch.randn(x.shape))


class Coupled(Method):
    id = "coupled"

    def base_classifier(self, ctx):
        return BatchMean(ctx)


class Unseeded(Method):
    id = "unseeded"

    def base_classifier(self, ctx):
        return GlobalRandom(ctx)
'''


def test_batch_coupling_and_global_rng_are_fail_lines(cli, tmp_path, monkeypatch):
    (tmp_path / "bad_adapters.py").write_text(COUPLED)
    monkeypatch.syspath_prepend(str(tmp_path))
    sub = entry(tmp_path, "methods:\n  coupled:\n    adapter: bad_adapters:Coupled\n"
                          "  unseeded:\n    adapter: bad_adapters:Unseeded\n")
    code, _, out = cli("validate", "--extra-registry", sub)
    assert code == 2
    coupled, unseeded = out.splitlines()
    assert coupled.startswith("FAIL coupled: methods.coupled: counts change with the batch size")
    assert "couples the samples of a batch (BatchNorm in train mode?)" in coupled
    assert unseeded.startswith("FAIL unseeded: methods.unseeded: counts change with the global "
                               "torch seed")
    assert "draws from the global RNG; use a seeded generator" in unseeded


def test_a_smoke_run_that_could_not_run_is_not_ok(cli, tmp_path):
    """No data here for the smoke certification: FAIL (exit 2) naming it, and no folders made."""
    missing = tmp_path / "no-data"
    code, _, err = cli("validate", "--method", "gaussian", "--dataset", "imagenet",
                       "--data-dir", missing)
    assert code == 2 and err.startswith("FAIL gaussian:") and "smoke NOT RUN" in err
    assert "--no-smoke to skip the smoke run knowingly" in err
    assert not missing.exists()


def test_smoke_runs_on_digits_for_an_entry_listing_three_datasets(cli, tmp_path):
    """Checking each dataset's params must not change which dataset is smoke-tested."""
    block = (ROOT / "registry.yaml").read_text().split("\n  gaussian:\n", 1)[1]
    lines = block.split("\n    reported:\n", 1)[0]
    sub = entry(tmp_path, "methods:\n  gaussian-copy:\n" + lines + "\n")
    assert "imagenet:" in sub.read_text() and "cifar10:" in sub.read_text()
    code, out, err = cli("validate", "--extra-registry", sub)
    assert code == 0, err
    assert out.startswith("OK   gaussian-copy:") and "smoke 2 images on digits" in out
