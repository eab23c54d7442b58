"""A build whose worker process dies (the out-of-memory killer, a crash) fails in one line instead of hanging."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from hostile import assert_no_leftovers

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import concepts.unify as unify
    from concepts import builders
    from concepts.errors import ConceptsError

    real = unify._stage_item

    def dying(task):
        # The third image kills its worker, as the out-of-memory killer would.
        if task[0] == 2 and os.getpid() != PARENT:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(task)

    PARENT = os.getpid()
    unify._stage_item = dying
    export, out = Path(sys.argv[1]), Path(sys.argv[2])
    source = builders.detect(export)(export, {"key": None})
    try:
        unify.build_dataset([source], out, unify.BuildOptions(size=(32, 32), workers=2))
    except ConceptsError as e:
        print("error:", e)
        sys.exit(1)
    """
)


def test_a_worker_killed_mid_build_ends_the_build_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "kill_worker.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    # multiprocessing.Pool (used before) waited forever for the lost task.
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "examples" / "cvat_export"), str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("error:")]
    assert "worker process ended without finishing its work" in line
    assert not out.exists()
    assert_no_leftovers(tmp_path)
