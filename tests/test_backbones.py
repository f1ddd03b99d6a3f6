"""The backbone catalogue: `fetch_weights` installing from a folder, refusing files
that are not what they claim, installing an operator's own `.keras` backbone, the
`--list` table, and the admins' page showing it."""

import importlib
import json
from pathlib import Path
from urllib.error import URLError

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from tests.test_ml import SHARED_WEIGHTS
from trainer.ml import backbones

# The catalogued files ../shared/weights/models holds (Lite0 is checked by its SHA-256).
IN_SHARED = ("mobilenetv2", "mobilenetv2_035", "mobilenet", "efficientnet_lite0")
needs_shared_weights = pytest.mark.skipif(
    not SHARED_WEIGHTS.is_dir(), reason=f"no ImageNet weights at {SHARED_WEIGHTS}"
)


@pytest.fixture(autouse=True)
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "keras"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def listed(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    capsys.readouterr()
    call_command("fetch_weights", "--list", "--json")
    return {row["name"]: row for row in json.loads(capsys.readouterr().out)}


@needs_shared_weights
def test_from_the_shared_folder_installs_the_mobilenets_and_lite0(capsys):
    call_command("fetch_weights", "--from", str(SHARED_WEIGHTS))
    out = capsys.readouterr().out
    for name in IN_SHARED:
        assert f"installed {name} (" in out
    assert f"found 4 of {len(backbones.CATALOGUE)} catalogue backbone files" in out

    rows = listed(capsys)
    assert list(rows)[: len(backbones.CATALOGUE)] == list(backbones.CATALOGUE)
    for name in IN_SHARED:
        assert rows[name]["installed"] and rows[name]["size_bytes"] > 1_000_000, rows[name]
    assert rows["efficientnet_lite0"]["size_mb"] > 10 and rows["efficientnet_lite0"]["path"].endswith(".keras")
    assert not rows["efficientnetv2b0"]["installed"] and rows["efficientnetv2b0"]["size_bytes"] is None
    assert {b.name for b in backbones.installed()} == set(IN_SHARED)

    call_command("fetch_weights", "--list")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "title", "installed"]
    lite0 = next(line for line in table if line.startswith("efficientnet_lite0 "))
    assert " yes " in lite0 and "75.1" in lite0 and "1280" in lite0


@needs_shared_weights
def test_from_names_the_backbones_asked_for_whose_file_is_not_there(capsys, keras_home):
    with pytest.raises(CommandError, match=r"efficientnetb0 \(efficientnetb0_notop.h5 is not in") as error:
        call_command("fetch_weights", "mobilenet", "efficientnetb0", "--from", str(SHARED_WEIGHTS))
    assert "mobilenetv2_035" not in str(error.value)  # not asked for, so not missing
    assert "installed mobilenet (" in capsys.readouterr().out  # what is there still installs
    assert (keras_home / "models/mobilenet_2_5_224_tf_no_top.h5").stat().st_size > 1_000_000


def test_a_file_that_is_not_the_published_one_is_refused_and_not_installed(tmp_path, keras_home):
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "efficientnetv2-b0_notop.h5").write_bytes(b"not really an h5 file" * 100)
    (folder / "efficientnet_lite0_imagenet.keras").write_bytes(b"not really a keras file" * 100)

    with pytest.raises(CommandError) as error:
        call_command("fetch_weights", "--from", str(folder))
    message = str(error.value)
    assert "efficientnetv2b0 refused" in message and "efficientnet_lite0 refused" in message
    assert str(folder / "efficientnetv2-b0_notop.h5") in message
    assert backbones.CATALOGUE["efficientnetv2b0"].keras_hash in message
    assert backbones.CATALOGUE["efficientnet_lite0"].sha256 in message
    assert not backbones.installed()
    for name in ("efficientnetv2b0", "efficientnet_lite0"):
        assert not backbones.weight_path(backbones.CATALOGUE[name]).exists()
    leftovers = [p for p in keras_home.rglob("*") if p.is_file()]
    assert not leftovers, leftovers


def test_from_a_folder_with_no_backbone_file_fails(tmp_path):
    with pytest.raises(CommandError, match="no backbone files in"):
        call_command("fetch_weights", "--from", str(tmp_path))
    with pytest.raises(CommandError, match="is not a folder"):
        call_command("fetch_weights", "--from", str(tmp_path / "absent"))


def tiny_backbone(path: Path) -> Path:
    """A small functional model whose pooled features come from a named layer."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(32, 32, 3))
    x = layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    outputs = layers.Dense(3, activation="softmax", name="classes")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def test_install_an_operators_own_backbone_file(tmp_path, capsys):
    model = tiny_backbone(tmp_path / "ours.keras")
    call_command("fetch_weights", "--install", str(model), "--name", "company_net", "--feature-layer", "features",
                 "--image-size", "32", "--title", "Company net")  # fmt: skip
    out = capsys.readouterr().out
    assert "installed company_net (" in out and "6 features from layer 'features'" in out
    assert backbones.file_digest(model, "sha256") in out

    ours = backbones.known()["company_net"]
    assert (ours.title, ours.feature_dim, ours.image_size, ours.preprocessing) == ("Company net", 6, 32, "unit")
    assert backbones.is_installed(ours) and ours in backbones.installed()
    row = listed(capsys)["company_net"]
    assert row["installed"] and row["kind"] == "file" and row["size_bytes"] == model.stat().st_size
    assert backbones.feature_extractor(ours, 32).output.shape[-1] == 6  # usable by training


def test_install_refuses_a_missing_layer_and_missing_options(tmp_path):
    model = tiny_backbone(tmp_path / "ours.keras")
    with pytest.raises(CommandError, match="has no layer named 'avg_pool'"):
        call_command("fetch_weights", "--install", str(model), "--name", "company_net", "--feature-layer", "avg_pool",
                     "--image-size", "32")  # fmt: skip
    assert "company_net" not in backbones.known()
    with pytest.raises(CommandError, match="--install needs --feature-layer, --image-size"):
        call_command("fetch_weights", "--install", str(model), "--name", "company_net")
    for taken in ("mobilenet", "auto", "resnet"):
        with pytest.raises(CommandError, match="not a catalogue name or auto, resnet, baseline"):
            call_command("fetch_weights", "--install", str(model), "--name", taken, "--feature-layer", "features",
                         "--image-size", "32")  # fmt: skip
    legacy = tmp_path / "ours.h5"
    legacy.write_bytes(model.read_bytes()[:100])
    with pytest.raises(CommandError, match=r"is not a \.keras model file"):
        call_command("fetch_weights", "--install", str(legacy), "--name", "old_net", "--feature-layer", "features",
                     "--image-size", "32")  # fmt: skip
    assert not {"old_net", "auto", "resnet"} & set(backbones.known())


def test_download_failures_are_listed_one_per_backbone(monkeypatch):
    from trainer.ml.weights import download

    def offline(backbone):
        if backbone.is_file:
            return download(backbone)  # refuses before any network access
        try:
            raise URLError("[Errno -2] Name or service not known")
        except URLError as exc:
            raise Exception(f"URL fetch failure on {backbone.url}: None -- {exc.reason}") from None

    monkeypatch.setattr("trainer.management.commands.fetch_weights.download", offline)
    with pytest.raises(CommandError) as error:
        call_command("fetch_weights", "efficientnetv2b0", "efficientnet_lite0")
    lines = str(error.value).splitlines()
    assert lines[0] == "2 backbone(s) not installed:"
    assert lines[1].startswith("  - efficientnetv2b0: download failed ([Errno -2] Name or service not known) from")
    assert "efficientnet_lite0" in lines[2] and "--from DIR" in lines[2]  # a file backbone has no download
    assert "--from DIR" in lines[-1]
    with pytest.raises(CommandError, match="no pretrained backbone named vgg16"):
        call_command("fetch_weights", "vgg16")


# Catalogue name -> (keras.src.applications module, its WEIGHTS_HASHES key).
KERAS_HASHED = {
    "efficientnetb0": ("efficientnet", "b0"),
    **{f"efficientnetv2b{i}": ("efficientnet_v2", f"b{i}") for i in range(4)},
    "convnexttiny": ("convnext", "convnext_tiny"),
    "resnet50v2": ("resnet", "resnet50v2"),
}


def test_the_catalogue_carries_keras_own_published_hashes_and_urls():
    for name, (module_name, key) in KERAS_HASHED.items():
        module = importlib.import_module(f"keras.src.applications.{module_name}")
        backbone = backbones.CATALOGUE[name]
        assert backbone.keras_hash == module.WEIGHTS_HASHES[key][1], name  # [1]: the no-top file
        assert backbone.url == module.BASE_WEIGHTS_PATH.rstrip("/") + "/" + backbone.weight_file, name
    unhashed = {b.name for b in backbones.CATALOGUE.values() if not b.is_file and not b.keras_hash}
    assert unhashed == {"mobilenetv2", "mobilenetv2_035", "mobilenet"}  # Keras publishes none for these


def test_the_backbones_page_is_for_admins(admin_client, member_client, client):
    response = admin_client.get(reverse("backbones:list"))
    assert response.status_code == 200
    page = response.content.decode()
    for backbone in backbones.CATALOGUE.values():
        assert f'data-name="{backbone.name}"' in page
    assert "fetch_weights --from DIR" in page and "<code>auto</code>" in page
    assert reverse("backbones:list") in admin_client.get(reverse("trainer:create")).content.decode()
    for outsider in (member_client, client):
        assert outsider.get(reverse("backbones:list")).status_code in (302, 403)
