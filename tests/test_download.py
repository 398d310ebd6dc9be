"""``python -m bench download``: registry models fetched from a local HTTP server (no network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest
import yaml

WEIGHTS = b"certbench test weights " * 1000


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """A folder served on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def registry(tmp_path, models: dict, name: str = "registry.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def entry(url: str, path: str = "tiny/weights.pt", sha256: str | None = None, **more):
    fields = {"source": "auto", "path": path, "url": url, **more}
    if sha256:
        fields["sha256"] = sha256
    return fields


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_download_puts_the_file_where_the_loader_looks(cli, tmp_path, server):
    root, base = server
    (root / "weights.pt").write_bytes(WEIGHTS)
    reg = registry(tmp_path, {"tiny": entry(f"{base}/weights.pt", sha256=sha(WEIGHTS))})
    models = tmp_path / "models"
    code, out, err = cli("download", "tiny", "--registry", reg, "--models-dir", models)
    assert code == 0, err
    target = models / "tiny" / "weights.pt"
    assert target.read_bytes() == WEIGHTS
    assert f"tiny: downloaded {base}/weights.pt -> {target}" in out
    assert "matches the registry" in out
    assert leftovers(models) == ["weights.pt"]  # no temporary file left

    code, out, err = cli("download", "tiny", "--registry", reg, "--models-dir", models)
    assert code == 0, err
    assert "already at" in out and "skipped" in out and "downloaded" not in out


def test_models_dir_defaults_to_the_environment(cli, tmp_path, server, monkeypatch):
    root, base = server
    (root / "weights.pt").write_bytes(WEIGHTS)
    reg = registry(tmp_path, {"tiny": entry(f"{base}/weights.pt")})
    monkeypatch.setenv("CERTBENCH_MODELS", str(tmp_path / "env-models"))
    code, out, err = cli("download", "tiny", "--registry", reg, "--quiet")
    assert code == 0, err
    assert (tmp_path / "env-models" / "tiny" / "weights.pt").read_bytes() == WEIGHTS
    assert f"sha256 {sha(WEIGHTS)}; the registry pins none" in out  # to paste into the entry


def test_wrong_sha256_is_refused_and_nothing_is_left(cli, tmp_path, server):
    root, base = server
    (root / "weights.pt").write_bytes(WEIGHTS)
    reg = registry(tmp_path, {"tiny": entry(f"{base}/weights.pt", sha256=sha(b"other"))})
    models = tmp_path / "models"
    code, out, err = cli("download", "tiny", "--registry", reg, "--models-dir", models)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("certbench: error: model tiny:")
    assert "sha256" in err and "Traceback" not in err
    assert not (models / "tiny" / "weights.pt").exists()
    assert leftovers(models) == []


def test_a_copy_with_the_wrong_hash_is_replaced(cli, tmp_path, server):
    root, base = server
    (root / "weights.pt").write_bytes(WEIGHTS)
    reg = registry(tmp_path, {"tiny": entry(f"{base}/weights.pt", sha256=sha(WEIGHTS))})
    target = tmp_path / "models" / "tiny" / "weights.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"damaged")
    code, out, err = cli("download", "tiny", "--registry", reg, "--models-dir", target.parents[1])
    assert code == 0, err
    assert target.read_bytes() == WEIGHTS
    assert "downloading it again" in err


def test_http_errors_and_web_pages_are_one_line(cli, tmp_path, server):
    root, base = server
    (root / "page.html").write_text("<html>a model card</html>")
    reg = registry(tmp_path, {
        "gone": entry(f"{base}/missing.pt"),
        "page": entry(f"{base}/page.html"),
        "repo": entry("https://github.com/locuslab/smoothing"),
    })
    models = tmp_path / "models"
    for name, expected in (("gone", "HTTP 404"), ("page", "is a web page"),
                           ("repo", "is a web page, not a file")):
        code, out, err = cli("download", name, "--registry", reg, "--models-dir", models)
        assert code == 2, (name, out, err)
        assert err.count("\n") == 1 and expected in err, err
    assert leftovers(models) == [] if models.exists() else True


def test_model_without_a_source(cli, tmp_path):
    reg = registry(tmp_path, {"local": {"source": "auto", "path": "mine.pt"}})
    code, out, err = cli("download", "local", "--registry", reg, "--models-dir", tmp_path)
    assert code == 2
    assert err.count("\n") == 1 and "local: no download source" in err
    assert str(tmp_path / "mine.pt") in err


def test_unknown_name_and_missing_arguments(cli, tmp_path, server):
    _, base = server
    reg = registry(tmp_path, {"tiny": entry(f"{base}/weights.pt")})
    code, _, err = cli("download", "tinny", "--registry", reg)
    assert code == 2 and "did you mean 'tiny'?" in err
    code, _, err = cli("download", "--registry", reg)
    assert code == 2 and "pass MODEL names or --all" in err
    code, _, err = cli("download", "tiny", "--all", "--registry", reg)
    assert code == 2 and "pass MODEL names or --all" in err


def test_all_downloads_every_downloadable_model(cli, tmp_path, server):
    root, base = server
    (root / "a.pt").write_bytes(WEIGHTS)
    (root / "b.pt").write_bytes(WEIGHTS[::-1])
    reg = registry(tmp_path, {
        "a": entry(f"{base}/a.pt", path="a/a.pt", sha256=sha(WEIGHTS)),
        "b": entry(f"{base}/b.pt", path="b.pt"),
        "by-hand": {"source": "auto", "path": "c.pt"},
        "paper": entry("https://github.com/locuslab/smoothing", path="d.pt"),
    })
    models = tmp_path / "models"
    code, out, err = cli("download", "--all", "--registry", reg, "--models-dir", models)
    assert code == 0, err
    assert (models / "a" / "a.pt").read_bytes() == WEIGHTS
    assert (models / "b.pt").read_bytes() == WEIGHTS[::-1]
    assert "by-hand: no download source" in out and "paper: its url" in out
    assert leftovers(models) == ["a.pt", "b.pt"]
    code, out, err = cli("download", "--all", "--registry", reg, "--models-dir", models)
    assert code == 0 and out.count("skipped") == 2


def test_hub_repo_is_snapshotted_into_the_models_dir(cli, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, local_dir=None, **kwargs):
        calls.append((repo_id, local_dir))
        (tmp_path / "models" / repo_id).mkdir(parents=True)
        (tmp_path / "models" / repo_id / "config.json").write_text("{}")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    reg = registry(tmp_path, {"ddpm": {"source": "diffusers", "path": "org/ddpm-tiny"}})
    args = ("download", "ddpm", "--registry", reg, "--models-dir", tmp_path / "models")
    code, out, err = cli(*args)
    assert code == 0, err
    assert calls == [("org/ddpm-tiny", str(tmp_path / "models" / "org" / "ddpm-tiny"))]
    assert "downloaded Hub repo org/ddpm-tiny" in out
    code, out, err = cli(*args)
    assert code == 0 and "skipped" in out and len(calls) == 1


def test_missing_checkpoint_names_the_url_and_the_command(cli, tmp_path, server):
    _, base = server
    reg = registry(tmp_path, {"tiny": entry(f"{base}/weights.pt", arch="digits_cnn")},
                   name="extra.yaml")
    models = tmp_path / "models"
    code, out, err = cli("run", "--model", "tiny", "--extra-registry", reg, "--models-dir",
                         models, "--max-images", 1, "--n", 10, "--quiet",
                         "--results", tmp_path / "results")
    assert code == 2
    assert err.count("\n") == 1, err
    assert str(models / "tiny" / "weights.pt") in err
    assert f"{base}/weights.pt" in err
    assert "python -m bench download tiny" in err and "--extra-registry" in err


def test_download_file_leaves_nothing_on_interrupt(tmp_path, server):
    from bench.registry.download import download_file

    root, base = server
    (root / "w.pt").write_bytes(WEIGHTS)

    class Boom:
        def __init__(self, response):
            self.response = response
            self.headers = response.headers

        def read(self, n):
            raise KeyboardInterrupt

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.response.close()

    import urllib.request

    def opener(request, timeout):
        return Boom(urllib.request.urlopen(request, timeout=timeout))  # noqa: S310

    with pytest.raises(KeyboardInterrupt):
        download_file(f"{base}/w.pt", tmp_path / "out" / "w.pt", opener=opener, progress=False)
    assert leftovers(tmp_path / "out") == []
