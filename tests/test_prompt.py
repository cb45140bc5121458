import pytest

from poegen.cli import main
from poegen.experts.shapes.prompt import parse_prompt
from poegen.experts.shapes.vocab import Phrase


def test_objects_and_relations():
    p = parse_prompt("A green wedge left of a yellow ball and a red box")
    assert p.objects == [Phrase("green", "wedge"), Phrase("yellow", "ball"), Phrase("red", "box")]
    assert p.relations == [(0, "left", 1)]
    assert p.questions() == ["is there a green wedge?", "is there a yellow ball?", "is there a red box?",
                             "is the green wedge left of the yellow ball?"]


def test_repeated_phrase_is_one_object():
    p = parse_prompt("a red ball on a blue box and a red ball")
    assert len(p.objects) == 2 and p.relations == [(0, "on", 1)]


@pytest.mark.parametrize("text,match", [
    ("a purple ball", r"unknown word 'purple'.*red, green, blue"),
    ("a red ball left a blue box", "left of"),
    ("and a red ball", "empty clause"),
    ("", "empty prompt"),
    ("a red", "names no shape"),
])
def test_prompt_errors_are_clear(text, match):
    with pytest.raises(ValueError, match=match):
        parse_prompt(text)


def test_cli_reports_prompt_errors(capsys):
    assert main(["generate", "a purple ball", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown word 'purple'" in err and "knows: " in err
