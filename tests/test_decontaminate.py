"""decontaminate: both coverage directions against evaluation sets, on constructed overlaps and
on evaluation questions planted inside long real conversations."""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipelines.errors import SpecError
from pipelines.run import run_spec
from schemas import Lineage, Message, Role, Sample
from schemas.arrow import ArrowCodec
from transforms.base import Filtered, Stat
from transforms.decontaminate import (
    DecontaminateConfig,
    DecontaminateFn,
    build_index,
    eval_texts,
    tokens,
)
from transforms.quality.ngrams import EvalIndex

EVAL_QUESTION = (
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences "
    "and must-see attractions."
)  # 19 word tokens ("must-see" is two, the comma none)
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore"


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def sample(*turns: tuple[str, str], system: str = "You are a helpful, respectful and honest assistant.") -> Sample:
    messages = [Message(role=Role.SYSTEM, content=system)]
    messages += [Message(role=Role(role), content=text, loss=role == "assistant") for role, text in turns]
    return Sample(id="s", kind="general", messages=messages, lineage=Lineage(source="t", source_id="s"))


def index_of(*texts: str, n: int = 10) -> EvalIndex:
    index = EvalIndex(n, min_tokens=n)
    for i, text in enumerate(texts):
        index.add("eval", str(i), text)
    return index


def test_tokens_are_lowercased_word_runs():
    assert tokens("Hello,  World\nagain must-see") == ["hello", "world", "again", "must", "see"]


def test_tokens_of_ascii_text_take_a_fast_path_to_the_regex_runs():
    import random

    rng = random.Random(7)
    alphabet = [chr(c) for c in range(128)] + list("éßİKΣσ中文，。’\u00a0\u2028") + ["Word", "snake_case", "42"]
    for _ in range(20_000):
        text = "".join(rng.choices(alphabet, k=rng.randrange(0, 40)))
        assert tokens(text) == re.findall(r"\w+", text.lower()), repr(text)


def test_joined_texts_never_form_an_ngram_across_two_texts_even_when_an_item_has_underscores():
    index = EvalIndex(6, min_tokens=6)
    index.add("eval", "0", "alpha beta gamma _ delta epsilon")  # "_" is an item word
    index.add("eval", "1", "one two three __ four five")
    across = index.measure(["alpha beta gamma", "delta epsilon", "one two three", "four five"], 1e-12)
    assert across.matches == [] and across.covered == 0 and across.tokens == 10
    inside = index.measure(["x", "alpha beta gamma _ delta epsilon", "y"], 1e-12)
    assert [m.item for m in inside.matches] == ["0"] and inside.covered == 6 and inside.tokens == 8


def test_training_side_counts_tokens_inside_matching_ngrams():
    index = index_of(words(12))  # eval text: w0 .. w11

    def training(*texts: str) -> tuple[int, int, list[str]]:
        m = index.measure(list(texts), 1e-12)
        return m.covered, m.tokens, m.covered_sets

    assert training(words(12)) == (12, 12, ["eval"])
    # 10 matching tokens inside 30
    assert training(f"{words(10)} {words(20, 'x')}")[:2] == (10, 30)
    # 9 shared tokens are not a 10-gram
    assert training(f"{words(9)} {words(20, 'x')}") == (0, 29, [])
    # case, punctuation and spacing do not matter
    assert training(words(12).upper().replace(" ", " ,  "))[0] == 12
    # n-grams do not span messages
    assert training(words(5), " ".join(f"w{i}" for i in range(5, 12)))[0] == 0
    # short messages count in the total
    assert training(words(12), "ok")[:2] == (12, 13)


def test_eval_side_share_of_the_items_ngrams():
    index = index_of(words(30), words(12, "q"))
    # the whole item inside a much longer text: its share is 1.0, the training side is small
    measurement = index.measure([f"{words(200, 'x')} {words(12, 'q')} {words(200, 'y')}"], 1e-12)
    assert [(m.item, m.share, m.grams) for m in measurement.matches] == [("1", 1.0, 3)]
    assert measurement.training_share == pytest.approx(12 / 412)
    # half of the 21 distinct 10-grams of item 0
    half = index.measure([words(20)], 1e-12)
    assert [(m.item, m.share) for m in half.matches] == [("0", round(11 / 21, 6))]
    assert index.matches([words(20)], 0.6) == []  # the old API still answers


def _reference_measure(index: EvalIndex, texts: list[str], min_share: float) -> tuple:
    """Every n-gram of every text looked up, position by position (the plain definition)."""
    seen, covering, covered_total, total = set(), set(), 0, 0
    for text in texts:
        words_ = tokens(text)
        total += len(words_)
        covered = bytearray(len(words_))
        for length in sorted(set(index.lengths)):
            for i in range(len(words_) - length + 1):
                gram = hash(tuple(words_[i : i + length]))
                if gram in index.postings:
                    seen.add(gram)
                    if length == index.n:
                        covered[i : i + length] = b"\x01" * length
                        covering.add(gram)
        covered_total += sum(covered)
    hits: dict[int, int] = {}
    for gram in seen:
        for item in index.postings[gram]:
            hits[item] = hits.get(item, 0) + 1
    shares = sorted((-(c / index.sizes[i]), i) for i, c in hits.items() if c / index.sizes[i] >= min_share)
    sets = sorted({index.items[i][0] for gram in covering for i in index.postings[gram]})
    return [index.items[i][1] for _, i in shares], covered_total, total, sets


def test_measure_looks_only_at_runs_of_the_items_words_and_finds_what_every_position_finds():
    import random

    rng = random.Random(4)
    vocabulary = [f"v{i}" for i in range(40)]
    index = EvalIndex(10, min_tokens=6)
    for i in range(60):  # items of 6..16 words: n-grams of lengths 6..10
        index.add("a" if i % 2 else "b", str(i), " ".join(rng.choices(vocabulary, k=rng.randrange(6, 17))))
    items = [text for _, _, text in index.items]
    for _ in range(300):
        texts = []
        for _ in range(rng.randrange(1, 4)):
            parts = [" ".join(rng.choices([*vocabulary, "x", "y", "z"], k=rng.randrange(0, 30)))]
            if rng.random() < 0.5:  # an item, whole or cut, inside other words
                item = rng.choice(items).split()
                parts.insert(rng.randrange(2), " ".join(item[rng.randrange(3) :]))
            texts.append(" ".join(parts))
        measured = index.measure(texts, 0.3)
        got = ([m.item for m in measured.matches], measured.covered, measured.tokens, measured.covered_sets)
        assert got == _reference_measure(index, texts, 0.3)


def test_eval_texts_from_strings_fields_turns_and_nested_lists():
    assert eval_texts("a question", ["text"]) == ["a question"]
    assert eval_texts({"turns": ["q1", "q2"], "category": "writing"}, ["turns"]) == ["q1", "q2"]
    assert eval_texts({"turns": [{"content": "q1"}]}, ["turns"]) == ["q1"]
    assert eval_texts({"meta": {"text": "deep"}}, ["meta.text"]) == ["deep"]
    assert eval_texts({"prompt": "p", "input": "i"}, ["prompt", "input"]) == ["p", "i"]
    assert eval_texts({"other": "x"}, ["text"]) == []
    # BFCL: a list of turns, each a list of messages
    bfcl = {
        "id": "multi_turn_base_0",
        "question": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
    }
    assert eval_texts(bfcl, ["question"]) == ["a", "b"]
    # only the listed roles of a message list (BFCL live sets hold system prompts and assistant turns)
    live = {
        "question": [
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
            ]
        ]
    }
    assert eval_texts(live, ["question"]) == ["s", "u", "a"]
    assert eval_texts(live, ["question"], ["user"]) == ["u"]


def _fn(tmp_path: Path, **config) -> DecontaminateFn:
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"question_id": 81, "turns": [EVAL_QUESTION, "Rewrite it."]}) + "\n")
    cfg = DecontaminateConfig(eval_sets=[{"name": "mt", "paths": str(eval_file), "fields": ["turns"]}], **config)
    return DecontaminateFn(cfg, [[str(eval_file)]])


def _outcome(fn: DecontaminateFn, s: Sample):
    results = list(fn(s))
    stats = {r.name: r.value for r in results if isinstance(r, Stat)}
    (main,) = [r for r in results if not isinstance(r, Stat)]
    return main, stats


def test_copied_eval_question_is_contaminated_and_named(tmp_path):
    fn = _fn(tmp_path)
    dirty = sample(("user", EVAL_QUESTION), ("assistant", "Aloha!"))  # 19 of 20 tokens covered
    result, stats = _outcome(fn, dirty)
    assert isinstance(result, Filtered) and result.reason == "contaminated"
    assert "eval side 1.0000" in result.detail and "mt item 81[0]" in result.detail
    assert "training side 0.9500" in result.detail and "19/20 tokens in 10-grams of mt" in result.detail
    assert stats["dirty"] == stats["eval_side"] == stats["eval_side:mt"] == stats["contaminated_by:mt"] == 1
    assert stats["covered_tokens"] == 19 and stats["tokens"] == 20


def test_question_hidden_in_a_long_conversation_is_caught(tmp_path):
    """The evaluation-side rule: the training-side share of this sample is about 0.1."""
    long_answer = " ".join([FILLER] * 10)
    hidden = sample(("user", f"{FILLER}. By the way: {EVAL_QUESTION} Thanks!"), ("assistant", long_answer))
    result, stats = _outcome(_fn(tmp_path), hidden)
    assert isinstance(result, Filtered) and "mt item 81[0]" in result.detail
    assert stats["clean"] == 1 and "dirty" not in stats  # the training side alone sees a clean sample
    assert isinstance(_outcome(_fn(tmp_path, rule="training_side"), hidden)[0], Sample)
    # half of the question (5 of its 10 distinct 10-grams) is enough at a lower eval_threshold
    part = " ".join(EVAL_QUESTION.split()[:14])
    partial = sample(("user", part), ("assistant", long_answer))
    assert isinstance(_outcome(_fn(tmp_path), partial)[0], Sample)
    assert isinstance(_outcome(_fn(tmp_path, eval_threshold=0.3), partial)[0], Filtered)


def test_rule_chooses_the_direction(tmp_path):
    # a sample made of the first 12 words of a long evaluation item: training side 1.0, eval side low
    eval_file = tmp_path / "long.jsonl"
    eval_file.write_text(json.dumps({"id": "long", "text": words(100)}) + "\n")
    sets = [{"name": "long", "paths": str(eval_file)}]
    piece = sample(("user", words(12)))
    outcomes = {
        rule: _outcome(DecontaminateFn(DecontaminateConfig(eval_sets=sets, rule=rule), [[str(eval_file)]]), piece)
        for rule in ("either", "eval_side", "training_side")
    }
    assert isinstance(outcomes["either"][0], Filtered) and isinstance(outcomes["training_side"][0], Filtered)
    assert isinstance(outcomes["eval_side"][0], Sample)
    assert outcomes["eval_side"][1]["dirty"] == 1 and "eval_side" not in outcomes["eval_side"][1]
    assert outcomes["either"][1]["training_side:long"] == 1


def test_annotation_and_training_side_statistics(tmp_path):
    fn = _fn(tmp_path, annotate="contamination", rule="training_side")
    half = sample(("user", EVAL_QUESTION), ("assistant", FILLER))  # 19 of 36 covered
    result, stats = _outcome(fn, half)
    assert isinstance(result, Sample) and stats["ambiguous"] == 1 and stats["eval_side"] == 1
    note = result.metadata["contamination"]
    assert note == {"eval_side": 1.0, "training_side": pytest.approx(19 / 36, abs=1e-6), "eval_item": "mt/81[0]"}
    clean, stats = _outcome(fn, sample(("user", "Tell me a joke about cats."), ("assistant", FILLER)))
    assert isinstance(clean, Sample) and stats["clean"] == 1
    assert clean.metadata["contamination"] == {"eval_side": 0.0, "training_side": 0.0}
    # the system prompt is ignored by default, so it cannot dilute coverage
    padded = sample(("user", EVAL_QUESTION), ("assistant", "Aloha!"), system=FILLER * 3)
    assert isinstance(_outcome(_fn(tmp_path, rule="training_side"), padded)[0], Filtered)
    # ... unless asked for
    with_system = _fn(tmp_path, rule="training_side", roles=["system", "user", "assistant"])
    assert isinstance(_outcome(with_system, padded)[0], Sample)


def test_threshold_n_and_min_tokens_are_configurable(tmp_path):
    half = sample(("user", EVAL_QUESTION), ("assistant", FILLER))
    assert isinstance(_outcome(_fn(tmp_path, rule="training_side", threshold=0.5), half)[0], Filtered)
    # 8 words of the question: below a 10-gram, but covered by 5-grams
    fragment = sample(("user", "Compose an engaging travel blog post about a"))
    assert _outcome(_fn(tmp_path), fragment)[1]["covered_tokens"] == 0
    assert isinstance(_outcome(_fn(tmp_path, n=5), fragment)[0], Filtered)
    # an item shorter than n but at least min_tokens long is matched whole
    short = sample(("user", "Please rewrite it. Then go on."))
    assert isinstance(_outcome(_fn(tmp_path, min_tokens=2), short)[0], Filtered)
    assert isinstance(_outcome(_fn(tmp_path), short)[0], Sample)  # default min_tokens 8: not indexed
    # an evaluation set without any item long enough is an error, not a silent no-op
    with pytest.raises(ValueError, match="gives no item of 30"):
        _fn(tmp_path, min_tokens=30).setup()


def test_item_ids_name_records(tmp_path):
    eval_file = tmp_path / "bfcl.jsonl"
    rows = [
        {"id": "simple_0", "question": [[{"role": "user", "content": words(12, "a")}]]},
        {"question": [[{"role": "user", "content": words(12, "b")}]]},
    ]
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DecontaminateConfig(eval_sets=[{"name": "bfcl", "paths": str(eval_file), "fields": ["question"]}])
    index = build_index(cfg, [[str(eval_file)]])
    assert [key for _, key, _ in index.items] == ["simple_0", "bfcl.jsonl:line 2"]


def test_config_and_eval_set_errors(tmp_path):
    with pytest.raises(ValidationError):
        DecontaminateConfig(eval_sets=[])
    with pytest.raises(ValidationError):
        DecontaminateConfig(eval_sets=[{"paths": "a.jsonl"}], threshold=0.1, clean_below=0.5)
    with pytest.raises(ValidationError):
        DecontaminateConfig(eval_sets=[{"paths": "a.jsonl"}], rule="both")
    with pytest.raises(ValidationError):
        DecontaminateConfig(eval_sets=[{"paths": "a.jsonl", "idfield": "id"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": 1, "answer": "no text field here at all ok"}) + "\n")
    cfg = DecontaminateConfig(eval_sets=[{"paths": str(empty)}])
    with pytest.raises(ValueError, match="gives no item"):
        build_index(cfg, [[str(empty)]])


def _write_spec(tmp_path: Path, eval_paths: str) -> Path:
    general = [
        {
            "id": "copy",
            "messages": [{"role": "user", "content": EVAL_QUESTION}, {"role": "assistant", "content": "Aloha!"}],
        },
        {
            "id": "half",
            "messages": [{"role": "user", "content": EVAL_QUESTION}, {"role": "assistant", "content": FILLER}],
        },
        {
            "id": "clean",
            "messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": FILLER}],
        },
        {
            "id": "second",
            "messages": [
                {"role": "user", "content": "Then " + words(30, "z")},
                {"role": "assistant", "content": "Ok."},
            ],
        },
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in general))
    (tmp_path / "evals").mkdir(exist_ok=True)
    (tmp_path / "evals" / "mt.jsonl").write_text(json.dumps({"turns": [EVAL_QUESTION, "Rewrite it."]}) + "\n")
    (tmp_path / "evals" / "plain.json").write_text(json.dumps([words(30, "z")]))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "decontaminate",
                "steps": [
                    {
                        "id": "read",
                        "type": "read",
                        "config": {"format": "openai", "source": "chat", "paths": "chat.jsonl"},
                    },
                    {"id": "chat", "type": "to_chat", "inputs": ["read"], "config": {"kind": "general"}},
                    {
                        "id": "decon",
                        "type": "decontaminate",
                        "inputs": ["chat"],
                        "config": {
                            "eval_sets": [
                                {"name": "mt_bench", "paths": eval_paths, "fields": ["turns"]},
                                {"name": "plain", "paths": "evals/plain.json"},
                            ]
                        },
                    },
                    {"id": "write", "type": "write", "inputs": ["decon"]},
                ],
            }
        )
    )
    return spec


def test_pipeline_ledger_rejected_and_manifest(tmp_path):
    spec = _write_spec(tmp_path, "evals/mt.jsonl")
    out = tmp_path / "out"
    manifest = run_spec(str(spec), str(out)).manifest
    ledger = manifest.steps["decon"]
    # "half" (the question and a new answer) is caught from the evaluation side only
    assert ledger.in_ == 4 and ledger.passed == 1
    assert ledger.filtered == {"contaminated": 3}
    summary = manifest.ratios["decon"]
    assert summary["contaminated"] == 3 and summary["eval_sets"] == ["mt_bench", "plain"]
    assert summary["contaminated_by_set"] == {"mt_bench": 2, "plain": 1}
    assert summary["rule"] == "either"
    eval_side, training_side = summary["eval_side"], summary["training_side"]
    assert eval_side["flagged"] == 3 and eval_side["flagged_by_set"] == {"mt_bench": 2, "plain": 1}
    assert sum(eval_side["best_item_coverage_deciles"]) == 4 and eval_side["best_item_coverage_deciles"][9] == 3
    assert training_side["flagged"] == 2 and training_side["flagged_by_set"] == {"mt_bench": 1, "plain": 1}
    assert training_side["ambiguous"] == 1 and training_side["clean"] == 1
    assert sum(training_side["coverage_deciles"]) == 4
    # the evaluation files are fingerprinted like inputs
    assert {Path(i.path).name for i in manifest.inputs if i.step == "decon"} == {"mt.jsonl", "plain.json"}
    rejected = [json.loads(line) for line in (out / "rejected" / "decon.jsonl").read_text().splitlines()]
    details = {r["record_id"]: r["detail"] for r in rejected}
    assert len(details) == 3 and all("eval side 1.0000" in d for d in details.values())
    named = sorted(re.search(r": (\w+) item (.+?) \(\d+ distinct", d).groups() for d in details.values())
    assert named == [
        ("mt_bench", "mt.jsonl:line 1[0]"),
        ("mt_bench", "mt.jsonl:line 1[0]"),
        ("plain", "plain.json:item 0"),
    ]
    codec = ArrowCodec(Sample)
    with pa.ipc.open_stream(str(out / "data-00000-of-00001.arrow")) as stream:
        kept = sorted(codec.from_row(row).lineage.source_id for row in stream.read_all().to_pylist())
    assert kept == ["clean"]


def test_missing_eval_file_is_a_spec_error(tmp_path):
    spec = _write_spec(tmp_path, "evals/nope.jsonl")
    with pytest.raises(SpecError, match="matched no files"):
        run_spec(str(spec), str(tmp_path / "out"))


# --- real data: MT-Bench questions planted inside long real conversations ------------------------

MT_BENCH = ("fastchat", "fastchat", "llm_judge", "data", "mt_bench", "question.jsonl")


def _real_sample(source: str, n: int, turns: list[tuple[str, str]]) -> Sample:
    messages = [Message(role=Role(role), content=text, loss=role == "assistant") for role, text in turns]
    return Sample(
        id=f"{source}_{n}", kind="general", messages=messages, lineage=Lineage(source=source, source_id=str(n))
    )


def _clean_real_samples(external) -> list[Sample]:
    """Every conversation of the general and agent sources the shipped recipes read."""
    samples: list[Sample] = []
    arena = external("arena_hard_auto", "data", "arena-hard-v0.1", "model_answer", "gpt-4-0314.jsonl")
    for n, line in enumerate(arena.read_text().splitlines()):
        record = json.loads(line)
        turns = [
            (m["role"], m["content"]["answer"] if isinstance(m["content"], dict) else m["content"])
            for m in record["messages"]
        ]
        samples.append(_real_sample("arena", n, turns))
    alpaca = json.loads(external("llamafactory_general_demos", "alpaca_en_demo.json").read_text())
    for n, r in enumerate(alpaca):
        samples.append(
            _real_sample("alpaca", n, [("user", f"{r['instruction']}\n{r['input']}"), ("assistant", r["output"])])
        )
    roles = {"human": "user", "gpt": "assistant"}
    for n, r in enumerate(json.loads(external("fastchat", "data", "dummy_conversation.json").read_text())):
        samples.append(_real_sample("dummy", n, [(roles[c["from"]], c["value"]) for c in r["conversations"]]))
    for path in sorted(glob.glob(str(external("agentinstruct_thudm", "*.parquet")))):
        for n, r in enumerate(pq.read_table(path).to_pylist()):
            turns = [(roles[c["from"]], c["value"]) for c in r["conversations"]]
            samples.append(_real_sample(f"agentinstruct:{Path(path).stem}", n, turns))
    glaive_roles = {**roles, "function_call": "assistant", "observation": "tool"}
    for path in sorted(glob.glob(str(external("llamafactory_glaive_toolcall", "*.json")))):
        for n, r in enumerate(json.loads(Path(path).read_text())):
            turns = [(glaive_roles[c["from"]], c["value"]) for c in r["conversations"]]
            samples.append(_real_sample(f"glaive:{Path(path).stem}", n, turns))
    for path in sorted(glob.glob(str(external("fireact", "data", "finetune", "gpt_format", "*.jsonl")))):
        for n, line in enumerate(Path(path).read_text().splitlines()):
            turns = [(m["role"], m["content"]) for m in json.loads(line)["messages"]]
            samples.append(_real_sample(f"fireact:{Path(path).stem}", n, turns))
    return samples


def _plant(host: Sample, question: str) -> Sample:
    """``question`` inserted verbatim in the middle of the host's longest message: at the first
    sentence boundary after its middle, else the first space, else at its end."""
    longest = max(range(len(host.messages)), key=lambda i: len(host.messages[i].content))
    text = host.messages[longest].content
    middle = len(text) // 2
    cut = text.find(". ", middle)
    cut = cut + 2 if cut >= 0 else (text.find(" ", middle) if text.find(" ", middle) >= 0 else len(text))
    planted = host.messages[longest].model_copy(update={"content": f"{text[:cut]} {question} {text[cut:]}"})
    messages = [*host.messages[:longest], planted, *host.messages[longest + 1 :]]
    return host.model_copy(update={"id": f"planted_{host.id}", "messages": messages})


@pytest.mark.real_data
def test_planted_mt_bench_questions_are_all_caught_and_clean_samples_pass(external):
    mt_bench = external(*MT_BENCH)
    bfcl = sorted(glob.glob(str(external("bfcl_gorilla", "BFCL_v4_*.json"))))
    config = DecontaminateConfig(
        eval_sets=[
            {"name": "mt_bench", "paths": str(mt_bench), "fields": ["turns"]},
            {"name": "bfcl", "paths": bfcl, "fields": ["question"], "item_roles": ["user"]},
        ]
    )
    fn = DecontaminateFn(config, [[str(mt_bench)], bfcl])
    fn.setup()
    assert fn.index is not None
    # every MT-Bench question the index holds (all 80 first turns, and second turns of 8+ tokens)
    questions = sorted(
        ((key, text) for name, key, text in fn.index.items if name == "mt_bench"), key=lambda q: -len(tokens(q[1]))
    )
    assert len(questions) == 153 and sum(1 for key, _ in questions if key.endswith("[0]")) == 80

    clean = _clean_real_samples(external)
    assert len(clean) == 6481
    flagged = [s for s in clean if isinstance(_outcome(fn, s)[0], Filtered)]
    assert len(flagged) / len(clean) <= 0.01
    assert flagged == []  # measured: none of the 6,481 real conversations contains an indexed item

    # hosts: long real conversations (Arena-Hard GPT-4 answers and AgentInstruct trajectories)
    hosts = sorted(
        (s for s in clean if s.lineage.source in ("arena", "agentinstruct:os.shared80", "agentinstruct:db.shared80")),
        key=lambda s: -sum(len(tokens(m.content)) for m in s.messages),
    )[: len(questions)]
    caught, training_side_caught = 0, 0
    for (key, question), host in zip(questions, hosts, strict=True):
        planted = _plant(host, question)
        assert sum(len(tokens(m.content)) for m in planted.messages) > 5 * len(tokens(question))
        result, stats = _outcome(fn, planted)
        if isinstance(result, Filtered) and f"mt_bench item {key} " in result.detail:
            caught += 1
        training_side_caught += stats.get("dirty", 0)
    assert caught == len(questions)  # 100 %
    assert training_side_caught == 0  # the training-side rule alone misses every one of them

    # the agent side: every 50th indexed BFCL user question planted in a glaive or FireAct conversation
    bfcl_text = {key: text for name, key, text in fn.index.items if name == "bfcl"}
    bfcl_items = list(bfcl_text.items())[::50]
    agent_hosts = [s for s in clean if s.lineage.source.startswith(("glaive", "fireact"))]
    assert len(bfcl_items) == 76
    for i, (key, question) in enumerate(bfcl_items):
        result, _ = _outcome(fn, _plant(agent_hosts[i * 37 % len(agent_hosts)], question))
        assert isinstance(result, Filtered) and result.detail.startswith("eval side 1.0000 (>= 0.8: True): bfcl item")
        named = re.search(r"bfcl item (\S+) ", result.detail).group(1)
        assert named == key or bfcl_text[named] == question  # BFCL repeats some questions across categories
