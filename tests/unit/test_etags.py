"""`If-None-Match` as RFC 9110 §13.1.2 defines it: the list grammar, `*`, weak comparison,
and a field that does not parse ignored as a whole."""

from __future__ import annotations

import pytest

from serve_app.etags import EntityTag, IfNoneMatch, parse_entity_tags, parse_if_none_match

CURRENT = EntityTag("2")


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ('"xyzzy"', [EntityTag("xyzzy")]),
        ('W/"xyzzy"', [EntityTag("xyzzy", weak=True)]),
        ('"xyzzy", "r2d2xxxx", "c3piozzzz"', ["xyzzy", "r2d2xxxx", "c3piozzzz"]),
        ('W/"xyzzy", W/"r2d2xxxx"', [EntityTag("xyzzy", True), EntityTag("r2d2xxxx", True)]),
        ('""', [EntityTag("")]),  # *etagc: an empty opaque tag
        ('"zzz","2"', ["zzz", "2"]),  # no whitespace needed
        ('  "zzz" \t,\t "2"  ', ["zzz", "2"]),  # OWS is SP or HTAB, around each comma
        ('"a", , "b"', ["a", "b"]),  # empty list elements are accepted (§5.6.1.2)
        (', "a",', ["a"]),
        ("", []),
        (" , ,", []),
        ('"a,b", "c"', ["a,b", "c"]),  # a comma is an etagc
        ('"W/x"', ["W/x"]),
        ('"!#~"', ["!#~"]),  # %x21, %x23, %x7E
        ('"\x80\xff"', ["\x80\xff"]),  # obs-text, as the server decodes header bytes (latin-1)
    ],
)
def test_a_list_of_entity_tags_parses(value, tags):
    expected = tuple(EntityTag(t) if isinstance(t, str) else t for t in tags)
    assert parse_entity_tags(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "2",  # unquoted
        '"2',  # unterminated
        '2"',
        '"a" "b"',  # no comma between
        '"a";"b"',
        'w/"a"',  # %s"W/": case-sensitive
        'W/ "a"',  # nothing between W/ and the quote
        'W/"a"x',
        '"a b"',  # SP is not an etagc
        '"a\x7fb"',  # DEL is not either
        '"a"b"',
        "*x",
        '*, "a"',  # "*" stands alone
        '"\x00"',
    ],
)
def test_a_value_off_the_grammar_is_none(value):
    assert parse_entity_tags(value) is None
    assert parse_if_none_match([value]) is None


@pytest.mark.parametrize(
    ("values", "matches"),
    [
        (['"zzz", "2"'], True),  # the fault: any listed tag matches, not only the first
        (['"2"'], True),
        (['W/"2"'], True),  # weak comparison (§8.8.3.2): W/ does not count
        (['"zzz"', '"2"'], True),  # two field lines are one list (§5.3)
        (['"zzz", W/"3"'], False),
        (['"02"'], False),  # compared character by character, not as numbers
        (['"2 "'], None),
        (["*"], True),
        ([" * "], True),
        ([""], False),  # a list with no tags matches nothing
        ([], None),  # no field
        (["2"], None),  # ignored: the 200 answer, as with no field
    ],
)
def test_if_none_match_matches_by_weak_comparison(values, matches):
    condition = parse_if_none_match(values)
    if matches is None:
        assert condition is None
    else:
        assert condition is not None and condition.matches(CURRENT) is matches


def test_star_matches_whatever_the_current_tag_is():
    assert IfNoneMatch(any=True).matches(EntityTag("anything", weak=True))


def test_an_entity_tag_prints_as_the_field_writes_it():
    assert (str(EntityTag("2-abc")), str(EntityTag("x", weak=True))) == ('"2-abc"', 'W/"x"')


def test_parsing_is_linear_in_a_long_hostile_value():
    value = "," + " " * 200_000 + "x"
    assert parse_entity_tags(value) is None
    many = ", ".join(['"t"'] * 20_000)
    assert len(parse_entity_tags(many) or ()) == 20_000
