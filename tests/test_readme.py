"""The README's two set-up commands are what CI runs."""
import re


def test_ci_runs_readme_commands(repo_root):
    readme = (repo_root / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme.split("## Set-up", 1)[1], re.S)
    install, test = blocks[0].strip(), blocks[1].strip()
    ci = (repo_root / ".ci" / "run").read_text()
    assert "pip install -e '.[torch,test]'" in install and "pip install -q -e '.[torch,test]'" in ci
    assert test in ci, "CI must run README's test command"
