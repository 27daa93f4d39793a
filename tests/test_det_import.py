"""Without detectron2, importing nasnet_det fails with one sentence on how to install it."""

import subprocess
import sys

from conftest import ROOT


def test_import_without_detectron2_says_how_to_install():
    code = ("import sys; sys.modules['detectron2'] = None\n"  # makes `import detectron2` fail
            "try:\n    import nasnet_det\nexcept ImportError as e:\n    print('MSG:' + str(e))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    msg = out.stdout.split("MSG:", 1)[1].strip()
    assert "Detectron2" in msg and "pip install --no-build-isolation" in msg and "[detectron2]" in msg
    assert msg.count(". ") == 0 and "\n" not in msg  # one sentence
    # nasnet_core alone still imports.
    code2 = ("import sys; sys.modules['detectron2'] = None\n"
             "import nasnet_core; print(len(nasnet_core.list_models()))")
    assert subprocess.run([sys.executable, "-c", code2], cwd=ROOT, capture_output=True, text=True,
                          timeout=120).stdout.strip() == "6"
