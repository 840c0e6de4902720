"""The sandbox's view of /tmp: an empty tmpfs, with the interpreter and the repository bound back when they live there."""
from helper.instructor.sandbox import _bind_back


def test_a_repository_under_tmp_is_bound_back_with_the_venv_inside_it(tmp_path):
    repo = tmp_path / "clone"
    (repo / ".venv").mkdir(parents=True)
    assert _bind_back([repo / ".venv", repo]) == ["--ro-bind", str(repo), str(repo)]


def test_a_symlinked_venv_is_recreated_as_a_link_and_its_target_bound(tmp_path):
    target, link = tmp_path / "venvs" / "py311", tmp_path / "elsewhere" / "venv"
    target.mkdir(parents=True)
    link.parent.mkdir()
    link.symlink_to(target)
    assert _bind_back([link, target]) == [
        "--symlink", str(target), str(link),  # bwrap cannot mount onto a symlink
        "--ro-bind", str(target), str(target),
    ]


def test_a_venv_symlink_inside_the_bound_repository_needs_nothing_more(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    (repo / ".venv").symlink_to("/opt/somewhere/venv")
    assert _bind_back([repo, repo / ".venv"]) == ["--ro-bind", str(repo), str(repo)]
