"""Profiles that are hostile or broken on purpose: other encodings, huge or
deep files, YAML built to expand, duplicate names and keys. Each must end in
one line naming the file (and the key, where there is one), never a
traceback, a hang or a memory blow-up."""

from __future__ import annotations

import os
import re
import tracemalloc
from pathlib import Path

import pytest
import torch  # noqa: F401  (the CLI loads plugins, which import torch: pay it at collection)

from autotune.cli import main
from autotune.errors import ProfileError
from autotune.profile import MAX_DEPTH, MAX_PROFILE_BYTES, MAX_VALUES, load_file, load_profiles
from autotune.profile import yaml_safe


def write(directory: Path, filename: str, data: str | bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def load_error(path: Path) -> ProfileError:
    """load_file(path) must fail with a one-line ProfileError naming the file."""
    with pytest.raises(ProfileError) as info:
        load_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and info.value.file == str(path)
    assert "\n" not in message and len(message) < 400 + len(str(path)), message
    return info.value


def nested(levels: int, leaf: str = "1") -> str:
    return "[" * levels + leaf + "]" * levels


def laughs(levels: int, width: int = 10) -> str:
    """A "billion laughs" document: each anchor repeats the previous one width times."""
    lines = ["name: laughs", "plugins:", "  lol:", f"    l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# -- encodings ---------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_utf16_32_and_utf8_with_a_byte_order_mark_are_decoded(tmp_path, encoding):
    text = "name: noted\ndescription: Grüße from Notepad\n"
    path = write(tmp_path, "noted.yaml", text.encode(encoding))
    assert load_file(path).description == "Grüße from Notepad"


def test_latin1_bytes_are_not_utf8_text(tmp_path):
    path = write(tmp_path, "latin.yaml", "name: latin\ndescription: café\n".encode("latin-1"))
    assert str(load_error(path)).endswith(
        "latin.yaml: not UTF-8 text: byte 0xe9 at line 2, column 17 (invalid continuation "
        "byte; Latin-1 or another 8-bit encoding?); save it as UTF-8")


@pytest.mark.parametrize("data", [bytes(range(256)) * 4, "name: x\n".encode("utf-16-le")],
                         ids=["binary", "utf16_without_bom"])
def test_binary_or_utf16_without_a_bom_says_so(tmp_path, data):
    path = write(tmp_path, "blob.yaml", data)
    assert "not UTF-8 text: it contains NUL bytes (a binary file, or UTF-16 without a " \
           "byte-order mark?)" in str(load_error(path))


def test_binary_without_nul_bytes_names_the_first_bad_byte(tmp_path):
    path = write(tmp_path, "photo.yaml", b"\xff\xd8\xff\xe0JFIF")
    assert "not UTF-8 text: byte 0xff at line 1, column 1 (invalid start byte" \
        in str(load_error(path))


def test_truncated_utf16_is_an_error(tmp_path):
    path = write(tmp_path, "cut.yaml", "name: cut\n".encode("utf-16")[:-1])
    assert "not UTF-16 text: byte 0x0a at byte 20 (truncated data)" in str(load_error(path))


def test_a_control_character_is_named_with_its_line(tmp_path):
    path = write(tmp_path, "bell.yaml", "name: bell\ndescription: ding\x07\n")
    assert str(load_error(path)).endswith(
        "not YAML text: character U+0007 at line 2, column 18 is not allowed")


# -- size and depth ----------------------------------------------------------------


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as stream:  # sparse: 1 GiB on paper, nothing on disk
        stream.truncate(1 << 30)
    assert str(load_error(path)).endswith(
        "huge.yaml: file is 1024.0 MiB; a profile may be at most 1 MiB")


def test_a_file_just_over_the_limit_is_refused_and_one_at_it_is_read(tmp_path):
    head = "name: big\ndescription: "
    over = write(tmp_path, "over.yaml", head + "x" * (MAX_PROFILE_BYTES - len(head)) + "\n")
    assert "file is 1.0 MiB; a profile may be at most 1 MiB" in str(load_error(over))
    exact = write(tmp_path, "big.yaml", head + "x" * (MAX_PROFILE_BYTES - len(head) - 1) + "\n")
    assert len(load_file(exact).description) == MAX_PROFILE_BYTES - len(head) - 1


def test_a_fifo_or_directory_is_not_read(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    assert str(load_error(tmp_path / "dir.yaml")).endswith("not a regular file")
    if hasattr(os, "mkfifo"):  # opening a FIFO would block until a writer comes
        os.mkfifo(tmp_path / "pipe.yaml")
        assert str(load_error(tmp_path / "pipe.yaml")).endswith("not a regular file")


def test_100000_open_brackets_stop_at_the_depth_limit(tmp_path):
    # Where the nesting is caught differs between PyYAML releases (ours at
    # column 33; 6.0.4's scanner at its own limit, column 1001): the error
    # names the file, says why, and where, on one line, either way.
    path = write(tmp_path, "brackets.yaml", "[" * 100_000)
    message = str(load_error(path))
    assert re.fullmatch(re.escape(str(path)) + rf": nested more than {MAX_DEPTH} levels deep "
                        r"\(at line 1, column (\d+)\)", message), message
    assert int(re.search(r"column (\d+)", message).group(1)) > MAX_DEPTH


def test_deep_block_nesting_is_refused(tmp_path):
    text = "".join(" " * i + f"k{i}:\n" for i in range(200))
    path = write(tmp_path, "stairs.yaml", text)
    assert f"nested more than {MAX_DEPTH} levels deep (at line 33, column 33)" \
        in str(load_error(path))


def test_nesting_up_to_the_limit_is_fine(tmp_path):
    # plugins (1) > deep (2) > opts (3) > a list nested to the limit
    levels = MAX_DEPTH - 3
    text = f"name: deep\nplugins:\n  deep:\n    opts: {nested(levels)}\n"
    path = write(tmp_path, "deep.yaml", text)
    value = load_file(path).plugins["deep"]["opts"]
    for _ in range(levels):
        value = value[0]
    assert value == 1
    write(tmp_path, "deep.yaml", text.replace(nested(levels), nested(levels + 1)))
    assert "nested more than" in str(load_error(path))


def test_too_many_values_are_refused_while_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(yaml_safe, "MAX_VALUES", 50)  # the limit lives where YAML is read
    path = write(tmp_path, "many.yaml", "name: many\nplugins:\n  x: {list: [" + "1, " * 100 + "1]}\n")
    assert str(load_error(path)).endswith(
        "many.yaml: has more than 50 values (at line 3, column 137); a profile may have at most 50")


def test_a_long_wrong_value_is_shortened_in_the_message(tmp_path):
    path = write(tmp_path, "long.yaml", "name: [" + "1, " * 5000 + "1]\n")
    assert str(load_error(path)).endswith(
        "long.yaml: key 'name': [1, 1, 1, 1, 1, 1, ...] is not of type 'string'")


# -- aliases -----------------------------------------------------------------------


def test_billion_laughs_is_refused_before_anything_is_built(tmp_path):
    path = write(tmp_path, "laughs.yaml", laughs(levels=9))  # 10**9 values expanded
    tracemalloc.start()
    try:
        error = load_error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(error).endswith(
        f"expands to more than {MAX_VALUES} values through its 80 alias(es) (the value at "
        f"line 8); a profile may have at most {MAX_VALUES}")
    assert peak < 20 << 20  # bytes: the document stays a few kilobytes of nodes


def test_a_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path, "loop.yaml", "name: loop\nplugins:\n  x: {me: &me [1, *me]}\n")
    assert str(load_error(path)).endswith(
        "an alias refers to the value that contains it (anchored at line 3); recursive "
        "aliases are not allowed")


def test_aliases_cannot_nest_deeper_than_the_limit(tmp_path):
    half = MAX_DEPTH // 2
    text = (f"name: stack\nplugins:\n  x:\n    a: &a {nested(half)}\n"
            f"    b: {nested(half, '*a')}\n")
    path = write(tmp_path, "stack.yaml", text)
    assert str(load_error(path)).endswith(  # x's mapping (line 4): b's 16 lists around a's 16
        "nested more than 32 levels deep once its aliases are expanded (the value at line 4)")


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path):
    path = write(tmp_path, "merged.yaml", "name: merged\nplugins:\n"
                 "  base: &base {a: 1, b: 2}\n  other: {<<: *base, b: 3}\n"
                 "  copies: {list: [*base, *base]}\n")
    plugins = load_file(path).plugins
    assert plugins["other"] == {"a": 1, "b": 3}  # the merge key is overridden, not a duplicate
    assert plugins["copies"]["list"] == [{"a": 1, "b": 2}] * 2


# -- keys --------------------------------------------------------------------------


def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, "twice.yaml", "name: twice\ndescription: a\npriority: 1\n"
                 "description: b\n")
    error = load_error(path)
    assert str(error) == f"{path}: key 'description': given twice, at lines 2 and 4; keep one"
    assert error.key == "description"


def test_a_nested_duplicate_key_names_its_full_path(tmp_path):
    path = write(tmp_path, "dl.yaml", "name: dl\nplugins:\n  dataloader:\n"
                 "    num_workers: 2\n    'num_workers': 8\n")
    assert str(load_error(path)).endswith(
        "dl.yaml: key 'plugins.dataloader.num_workers': given twice, at lines 4 and 5; keep one")


def test_a_non_string_key_is_refused(tmp_path):
    path = write(tmp_path, "yes.yaml", "name: yes\nplugins:\n  x: {yes: 1}\n")
    assert str(load_error(path)).endswith(
        "yes.yaml: key 'plugins.x': the key yes at line 3 is read as true/false, not a string; "
        "quote it")


@pytest.mark.parametrize("value, reason", [
    ("9" * 5000, "cannot read 9999999999999999999999999999999999999...: Exceeds the limit "
                 "(4300 digits) for integer string conversion"),
    ("2024-13-45", "cannot read 2024-13-45: month must be in 1..12"),
])
def test_a_value_python_cannot_build_is_a_yaml_error(tmp_path, value, reason):
    path = write(tmp_path, "odd.yaml", f"name: odd\nplugins:\n  x: {{v: {value}}}\n")
    assert f"invalid YAML at line 3, column 10: {reason}" in str(load_error(path))


# -- duplicate profile names -------------------------------------------------------


def test_two_files_of_one_name_in_one_directory(tmp_path):
    write(tmp_path, "twin.yaml", "name: twin\n")
    second = write(tmp_path, "twin.yml", "name: twin\n")
    with pytest.raises(ProfileError) as info:
        load_profiles([tmp_path])
    assert str(info.value) == (
        f"{second}: key 'name': profile 'twin' is also defined by {tmp_path / 'twin.yaml'}, "
        "at the same precedence (--profile-dir), so neither can win; remove or rename one")


def test_two_profile_dirs_giving_one_name(tmp_path):
    write(tmp_path / "a", "box.yaml", "name: box\n")
    write(tmp_path / "b", "box.yaml", "name: box\n")
    with pytest.raises(ProfileError, match=r"b/box.yaml: key 'name': profile 'box' is also "
                                           r"defined by .*a/box.yaml, at the same precedence"):
        load_profiles([tmp_path / "a", tmp_path / "b"])


def test_two_env_dirs_giving_one_name(tmp_path, monkeypatch):
    write(tmp_path / "a", "box.yaml", "name: box\n")
    write(tmp_path / "b", "box.yaml", "name: box\n")
    monkeypatch.setenv("AUTOTUNE_PROFILE_PATH", os.pathsep.join([str(tmp_path / "a"),
                                                                 str(tmp_path / "b")]))
    with pytest.raises(ProfileError, match=r"same precedence \(\$AUTOTUNE_PROFILE_PATH\)"):
        load_profiles()


def test_one_directory_named_twice_is_read_once(tmp_path, monkeypatch):
    write(tmp_path, "box.yaml", "name: box\n")
    monkeypatch.setenv("AUTOTUNE_PROFILE_PATH", str(tmp_path))
    assert load_profiles([tmp_path, tmp_path / "."])["box"].path == str(tmp_path / "box.yaml")


def test_levels_still_override_each_other(tmp_path, monkeypatch):
    # A user profile replaces a built-in, and --profile-dir replaces the env var's.
    write(tmp_path / "env", "generic_cpu.yaml", "name: generic_cpu\ndescription: env\n")
    write(tmp_path / "flag", "generic_cpu.yaml", "name: generic_cpu\ndescription: flag\n")
    monkeypatch.setenv("AUTOTUNE_PROFILE_PATH", str(tmp_path / "env"))
    assert load_profiles([tmp_path / "flag"])["generic_cpu"].description == "flag"


# -- the command line --------------------------------------------------------------


CLI_CASES = {
    "latin1": ("name: latin1\ndescription: café\n".encode("latin-1"), "not UTF-8 text"),
    "brackets": (b"[" * 100_000, "nested more than 32 levels deep"),
    "laughs": (laughs(levels=9).encode(), "values through its 80 alias(es)"),
    "twice": (b"name: twice\nname: twice\n", "key 'name': given twice, at lines 1 and 2"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, case):
    data, reason = CLI_CASES[case]
    path = write(tmp_path, f"{case}.yaml", data)
    code = main(["profiles", "--profile-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (out, err)
    assert err.startswith(f"autotune: error: {path}: ") and reason in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_duplicate_profile_names_exit_2(tmp_path, capsys):
    write(tmp_path, "twin.yaml", "name: twin\n")
    write(tmp_path, "twin.yml", "name: twin\n")
    assert main(["profiles", "--profile-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "profile 'twin' is also defined by" in err
