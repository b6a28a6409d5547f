"""MkDocs hook: serve files committed under resources/ as part of the site, without copying them into docs/.

The paper report `resources/paper/fashion_mnist/report.md` becomes the page `paper/fashion_mnist/report.md` (its
figures beside it, so its relative image links work), and the demo figures `resources/demo_*.png` become
`demo_*.png` at the site's root.
"""
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
PATTERNS = ("paper/*/report.md", "paper/*/figures/*", "demo_*.png")


def on_files(files, config):
    for pattern in PATTERNS:
        for path in sorted(RESOURCES.glob(pattern)):
            uri = path.relative_to(RESOURCES).as_posix()
            if files.get_file_from_path(uri) is None:
                files.append(File(uri, src_dir=str(RESOURCES), dest_dir=config["site_dir"],
                                  use_directory_urls=config["use_directory_urls"]))
    return files
