"""Prompt data on real files: formats, validation errors, rendering, streaming, rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pte_ray.rl.data import (
    BOXED_INSTRUCTION,
    DataConfig,
    DataError,
    PromptStream,
    filter_by_length,
    load_dataset,
    load_prompts,
    render_prompt,
)
from pte_ray.run.rollout_log import ROLLOUT_SCHEMA, RolloutWriter, read_rollouts

ROWS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(10)]


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    lines = [json.dumps(r).encode() for r in rows]
    for lineno, raw in (raw_lines or {}).items():
        lines[lineno - 1] = raw
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def write_parquet(path: Path, rows: list) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    """A real (tiny, word-level) HF fast tokenizer with a chat template."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "[UNK] <s> what is + ? system user assistant be brief".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    hf.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return hf


# ----------------------------------------------------------------------------- formats


def test_jsonl_json_parquet_and_shards_agree(tmp_path: Path):
    j = write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    (tmp_path / "c.json").write_text(json.dumps({"data": ROWS}))
    p = write_parquet(tmp_path / "d.parquet", ROWS)
    shards = tmp_path / "shards"
    shards.mkdir()
    write_parquet(shards / "part-00000.parquet", ROWS[:4])
    write_parquet(shards / "part-00001.parquet", ROWS[4:])
    (shards / "_SUCCESS").write_text("")
    (shards / ".part-00002.parquet.crc").write_text("x")
    want = [(r["prompt"], r["answer"]) for r in ROWS]
    for path in (j, tmp_path / "b.json", tmp_path / "c.json", p, shards):
        exs = load_prompts(DataConfig(path=str(path)))
        assert [(e.prompt, e.answer) for e in exs] == want, path
        assert [e.index for e in exs] == list(range(10))
    assert load_prompts(DataConfig(path=str(j)))[2].source == f"{j}:3"
    assert load_prompts(DataConfig(path=str(shards)))[5].source.endswith("part-00001.parquet:2")


def test_custom_columns_and_messages(tmp_path: Path):
    rows = [{"question": "q1", "solution": "1", "x": 5}]
    path = write_parquet(tmp_path / "q.parquet", rows)
    ex = load_prompts(DataConfig(path=str(path), prompt_key="question", answer_key="solution"))
    assert (ex[0].prompt, ex[0].answer) == ("q1", "1")
    chat = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "what is 1 + 1 ?"},
            ],
            "answer": "2",
        }
    ]
    for path in (write_jsonl(tmp_path / "m.jsonl", chat), write_parquet(tmp_path / "m.pq", chat)):
        ex = load_prompts(DataConfig(path=str(path), messages_key="messages"))
        assert ex[0].prompt == "what is 1 + 1 ?" and ex[0].messages[0]["role"] == "system"


# ----------------------------------------------------------------------------- validation

BAD_JSONL = [
    ({3: b'{"prompt": "broken'}, "row 3: undecodable line"),
    ({4: b'\xff\xfe{"prompt": 1}'}, "row 4: undecodable line"),
    ({2: b'{"answer": "1"}'}, "row 2: missing column 'prompt'"),
    ({5: b'{"prompt": "hi"}'}, "row 5: missing column 'answer'"),
    ({6: b'{"prompt": "   ", "answer": "1"}'}, "row 6: empty prompt"),
    ({7: b'{"prompt": "hi", "answer": 1.5}'}, "row 7: answer is float, expected a string"),
    ({7: b'{"prompt": "hi", "answer": true}'}, "row 7: answer is bool, expected a string"),
    ({8: b'{"prompt": "hi", "answer": ""}'}, "row 8: empty answer"),
    ({9: b'["prompt", "answer"]'}, "row 9: row is a list"),
    ({1: b'{"prompt": ["a"], "answer": "1"}'}, "row 1: prompt is list"),
]


@pytest.mark.parametrize("raw,message", BAD_JSONL)
def test_bad_jsonl_row_names_file_and_row(tmp_path: Path, raw: dict, message: str):
    path = write_jsonl(tmp_path / "bad.jsonl", ROWS, raw)
    with pytest.raises(DataError) as err:
        load_prompts(DataConfig(path=str(path)))
    assert f"{path}: {message}" in str(err.value)
    exs, report = load_dataset(DataConfig(path=str(path), skip_bad_rows=True))
    assert (len(exs), report.skipped, report.rows) == (9, 1, 10)
    assert sum(report.reasons.values()) == 1


def test_many_bad_rows_listed_and_skip_counts(tmp_path: Path):
    rows = [dict(r) for r in ROWS]
    for i in (1, 3, 5):
        rows[i]["answer"] = None  # a null in a Parquet string column
    rows[7]["prompt"] = None
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError) as err:
        load_prompts(DataConfig(path=str(path)))
    msg = str(err.value)
    assert msg.startswith("4 bad row(s)")
    for row, why in [(2, "answer is NoneType"), (6, "answer is NoneType"), (8, "empty prompt")]:
        assert f"{path}: row {row}: {why}" in msg
    exs, report = load_dataset(DataConfig(path=str(path), skip_bad_rows=True))
    assert len(exs) == 6 and report.skipped == 4 and report.kept == 6
    assert report.reasons["empty prompt"] == 1
    assert [e.index for e in exs] == list(range(6))
    assert exs[1].source == f"{path}:3"


def test_file_level_errors(tmp_path: Path):
    p = write_parquet(tmp_path / "x.parquet", [{"question": "q", "answer": "1"}])
    with pytest.raises(DataError, match=r"x\.parquet: missing column\(s\) \['prompt'\]"):
        load_prompts(DataConfig(path=str(p)))
    with pytest.raises(DataError, match="no such file"):
        load_prompts(DataConfig(path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_prompts(DataConfig(path=str(tmp_path / "d.csv")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="directory has no"):
        load_prompts(DataConfig(path=str(tmp_path / "empty")))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        load_prompts(DataConfig(path=str(tmp_path / "bad.json")))
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"corrupt\.parquet: cannot read Parquet"):
        load_prompts(DataConfig(path=str(tmp_path / "corrupt.parquet")))
    blank = write_jsonl(tmp_path / "blank.jsonl", [])
    with pytest.raises(DataError, match="no usable rows"):
        load_prompts(DataConfig(path=str(blank)))


# ----------------------------------------------------------------------------- rendering


def test_render_plain_and_chat(tmp_path: Path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    ex = load_prompts(DataConfig(path=str(path)))[0]
    plain = DataConfig(path="", system_prompt="be brief", instruction="boxed")
    assert render_prompt(ex, plain) == f"be brief\n\nWhat is 0 + 0?\n\n{BOXED_INSTRUCTION}"
    assert render_prompt(ex, DataConfig(path="")) == "What is 0 + 0?"
    chat = DataConfig(path="", system_prompt="be brief", apply_chat_template=True)
    text = render_prompt(ex, chat, tokenizer)
    assert text == "<|system|>be brief\n<|user|>What is 0 + 0?\n<|assistant|>"
    with pytest.raises(ValueError, match="tokenizer"):
        render_prompt(ex, chat)


def test_filter_by_length_reports_and_never_truncates(tmp_path: Path, tokenizer):
    rows = [{"prompt": "what is " + "+ " * n + "?", "answer": "1"} for n in (1, 10, 2, 30)]
    exs = load_prompts(DataConfig(path=str(write_jsonl(tmp_path / "l.jsonl", rows))))
    kept, report = filter_by_length(exs, tokenizer, max_prompt_tokens=8)
    assert [e.index for e in kept] == [0, 2]
    assert kept[1].prompt == rows[2]["prompt"]
    assert [(i, n) for i, _, n in report.dropped] == [(1, 13), (3, 33)]
    assert report.dropped[0][1].endswith("l.jsonl:2") and report.longest_kept == 5
    assert "2 of 4 prompts exceed 8 tokens" in str(report)
    chat = DataConfig(path="", apply_chat_template=True)
    kept, report = filter_by_length(exs, tokenizer, max_prompt_tokens=8, cfg=chat)
    assert len(kept) + len(report.dropped) == 4 and report.kept == len(kept)


# ----------------------------------------------------------------------------- streaming


def _examples(tmp_path: Path, n: int = 23):
    rows = [{"prompt": f"p{i}", "answer": str(i)} for i in range(n)]
    return load_prompts(DataConfig(path=str(write_jsonl(tmp_path / "s.jsonl", rows))))


def test_stream_epochs_are_seeded_permutations(tmp_path: Path):
    exs = _examples(tmp_path)
    s = PromptStream(exs, seed=1)
    e0 = [e.index for e in s.next_batch(23)]
    e1 = [e.index for e in s.next_batch(23)]
    assert sorted(e0) == sorted(e1) == list(range(23)) and e0 != e1
    assert s.cursor() == {"epoch": 2, "index": 0}
    assert [e.index for e in PromptStream(exs, seed=1).next_batch(46)] == e0 + e1
    assert [e.index for e in PromptStream(exs, seed=2).next_batch(23)] != e0


def test_stream_resume_from_cursor_is_identical(tmp_path: Path):
    exs = _examples(tmp_path)
    a = PromptStream(exs, seed=7)
    a.next_batch(5)
    a.next_batch(11)
    cur = json.loads(json.dumps(a.cursor()))  # as stored in a checkpoint
    rest = [e.index for e in a.next_batch(40)]
    b = PromptStream(exs, seed=7)
    b.restore(cur)
    assert [e.index for e in b.next_batch(40)] == rest
    with pytest.raises(ValueError):
        b.restore({"epoch": 0, "index": 24})


# ----------------------------------------------------------------------------- rollouts


def _rows(n: int, step: int) -> list[dict]:
    return [
        {
            "prompt": f"p{i}",
            "completion": f"c{i} \\boxed{{{i}}}",
            "answer": str(i),
            "reward": float(i % 2),
            "status": "ok" if i % 2 else "mismatch",
            "version": step,
            "evictions": i,
            "num_tokens": 10 + i,
            "group": i // 2,
        }
        for i in range(n)
    ]


def test_rollout_writer_round_trip(tmp_path: Path):
    assert read_rollouts(tmp_path).num_rows == 0
    w = RolloutWriter(tmp_path)
    p1 = w.write(1, _rows(4, 1))
    w.write(2, {k: [r[k] for r in _rows(3, 2)] for k in _rows(1, 2)[0]})
    assert p1 == tmp_path / "rollouts" / "step_000001.parquet"
    (tmp_path / "rollouts" / ".step_000003.parquet.tmp-99").write_bytes(b"half a file")
    t = read_rollouts(tmp_path)
    assert t.schema == ROLLOUT_SCHEMA and t.num_rows == 7
    assert t.column("step").to_pylist() == [1] * 4 + [2] * 3
    assert t.column("prompt_index").null_count == 7
    assert t.column("evicted_slots").null_count == 7  # window runs record nothing
    direct = ds.dataset(str(tmp_path / "rollouts"), format="parquet").to_table()
    assert direct.num_rows == 7 and pq.read_schema(p1).field("reward").type == pa.float64()
    w.write(2, _rows(1, 2))  # a resumed step replaces its file
    assert read_rollouts(tmp_path).num_rows == 5
    assert sorted(f.name for f in (tmp_path / "rollouts").iterdir() if "tmp" in f.name) == [
        ".step_000003.parquet.tmp-99"
    ]


def test_rollout_writer_keeps_the_rkv_record(tmp_path: Path):
    rows = _rows(3, 1)
    rows[1]["evicted_slots"] = [[0, 5, 9], [1, 2, 7]]
    rows[2]["evicted_slots"] = []  # a row that never evicted
    RolloutWriter(tmp_path).write(1, rows)
    got = read_rollouts(tmp_path).column("evicted_slots").to_pylist()
    assert got == [None, [[0, 5, 9], [1, 2, 7]], []]
    assert ROLLOUT_SCHEMA.metadata[b"pte_ray.rollouts.schema_version"] == b"3"


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda r: r.pop("reward"), "'reward' is required"),
        (lambda r: r.update(bogus=1), "unknown rollout column"),
        (lambda r: r.update(num_tokens="many"), "do not fit the schema"),
        (lambda r: r.update(step=9), "step other than 1"),
    ],
)
def test_rollout_writer_rejects_bad_rows(tmp_path: Path, change, match: str):
    rows = _rows(2, 1)
    change(rows[0])
    with pytest.raises(ValueError, match=match):
        RolloutWriter(tmp_path).write(1, rows)
    assert not list((tmp_path / "rollouts").iterdir())


def test_integer_answers_are_read_as_text(tmp_path: Path):
    path = write_jsonl(tmp_path / "aime.jsonl", [{"prompt": "p", "answer": 204}])
    assert load_prompts(DataConfig(path=str(path)))[0].answer == "204"


def _corrupt_row_group(path, rg: int) -> None:
    """Overwrites the first data page header of row group ``rg`` with garbage."""
    import pyarrow.parquet as pq

    off = pq.ParquetFile(path).metadata.row_group(rg).column(0).data_page_offset
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\xff" * 16)


def test_a_corrupt_parquet_row_group_is_named_or_skipped_and_counted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(12)]
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    _corrupt_row_group(path, 1)
    with pytest.raises(
        DataError, match=r"shard.parquet: row 5: row group 1 \(rows 5-8\) unreadable"
    ):
        load_dataset(DataConfig(path=str(path)))
    examples, report = load_dataset(DataConfig(path=str(path), skip_bad_rows=True))
    assert [e.answer for e in examples] == ["0", "1", "2", "3", "8", "9", "10", "11"]
    assert (report.rows, report.skipped, report.kept) == (12, 4, 8)


def test_an_unverifiable_gold_answer_is_named_counted_and_its_prompt_skipped(tmp_path, caplog):
    path = tmp_path / "gold.jsonl"
    rows = [
        {"prompt": "q1", "answer": "7"},
        {"prompt": "q2", "answer": "9^{9^{9^9}}"},
        {"prompt": "q3", "answer": "3"},
    ]  # fmt: skip (three rows, one line each)
    path.write_text("\n".join(json.dumps(r) for r in rows))
    examples, report = load_dataset(DataConfig(path=str(path)))
    assert [e.answer for e in examples] == ["7", "3"]
    assert report.unverifiable == [f"{path}:2"]
    assert "gold answer" in caplog.text and "power tower" in caplog.text
