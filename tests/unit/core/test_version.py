"""The package version: from the installed metadata, with a fallback for a plain checkout."""

from importlib import metadata

from imgclf.core import version


def test_the_version_is_the_installed_one():
    assert version.package_version() == metadata.version("imgclf")


def test_a_plain_checkout_has_the_unknown_version(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version.metadata, "version", not_installed)
    assert version.package_version() == version.UNKNOWN == "0"
