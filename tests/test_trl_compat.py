"""TRL trains on an agentmill export with the same tokens and the same loss mask as train/sft.py.

A small pipeline run (OpenAI records -> read -> to_chat -> write) makes a multi-turn tool sample
(parallel calls, their results, a follow-up call, answers) and a sample whose first assistant turn
is an unsupervised acknowledgement. ``agentmill export --to openai --arguments object --loss-key
train`` writes them as TRL reads them. TRL's ``SFTTrainer`` (``assistant_only_loss=True``) then
trains a tiny local model for 2 steps with ``templates/trl/<name>_training.jinja`` (the built-in
``chatml`` or ``llama3`` plus ``{% generation %}`` markers), and its prepared ``input_ids`` /
``labels`` must equal ``train.data.tokenize_sample``'s for every sample, token by token. The
demo's shards (every kind of sample) are checked the same way. No downloads.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.helpers import run, write_spec

pytest.importorskip("trl")

#: The TRL variants of the built-in templates: the same text plus ``{% generation %}`` markers.
TRL_TEMPLATES = {name: REPO / "templates" / "trl" / f"{name}_training.jinja" for name in ("chatml", "llama3")}
#: What each template prints to end an assistant turn, and after that (context for train/sft.py).
END_OF_TURN = {"chatml": ("<|im_end|>", "\n"), "llama3": ("<|eot_id|>", "")}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {  # no "required": a loader that unifies the tools' structs would add "required": null
        "type": "function",
        "function": {
            "name": "to_fahrenheit",
            "description": "Celsius to Fahrenheit",
            "parameters": {"type": "object", "properties": {"celsius": {"type": "number"}}},
        },
    },
]


def call(n: int, name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


RECORDS = [
    {
        "id": "weather",
        "tools": TOOLS,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant with tools."},
            {"role": "user", "content": "What is the weather in Paris and in Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [call(0, "get_weather", city="Paris"), call(1, "get_weather", city="Rome")],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": '{"temp_c": 18, "sky": "cloudy"}'},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 24, "sky": "sunny"}'},
            {"role": "assistant", "content": "Paris is cloudy at 18 °C; Rome is sunny at 24 °C."},
            {"role": "user", "content": "And Rome in Fahrenheit?"},
            {
                "role": "assistant",
                "content": "Let me convert it.",
                "tool_calls": [call(2, "to_fahrenheit", celsius=24)],
            },
            {"role": "tool", "tool_call_id": "call_2", "content": "75.2"},
            {"role": "assistant", "content": "24 °C is 75.2 °F in Rome."},
        ],
    },
    {
        "id": "acknowledged",
        "messages": [
            {"role": "user", "content": "Answer in one sentence. Understood?"},
            {"role": "assistant", "content": "Ok."},  # read as loss=false (an acknowledgement)
            {"role": "user", "content": "Why is the sky blue?"},
            {"role": "assistant", "content": "Air scatters blue light more than red light."},
        ],
    },
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """``(output dir, export JSONL)`` of the pipeline run on :data:`RECORDS`."""
    base = tmp_path_factory.mktemp("trl")
    source = base / "chats.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    steps = [
        {"id": "read", "type": "read", "config": {"format": "openai", "paths": [str(source)]}},
        {"id": "chat", "type": "to_chat", "inputs": ["read"]},
        {"id": "write", "type": "write", "inputs": ["chat"], "config": {"num_shards": 1}},
    ]
    out = base / "out"
    run(write_spec(base, steps), out)
    path = base / "export.jsonl"
    command = [sys.executable, "-m", "pipelines.cli", "export", str(out), "--to", "openai", "--output", str(path)]
    command += ["--arguments", "object", "--loss-key", "train", "--with-ids"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out, path


@pytest.fixture(scope="module", params=sorted(TRL_TEMPLATES))
def template_name(request) -> str:
    """The built-in template under test (each has a TRL variant)."""
    return request.param


@pytest.fixture(scope="module")
def tokenizer(exported, template_name):
    """A byte-level BPE trained on the samples' text, with the template's special tokens, and the
    template's TRL variant as its chat template."""
    from train.data import load_samples
    from train.templates import ensure_special_tokens, load_template
    from train.tiny import train_tokenizer

    texts = [m.content for s in load_samples([str(exported[0])]) for m in s.messages]
    tok = train_tokenizer(texts, vocab_size=400)
    ensure_special_tokens(tok, load_template(template_name))
    tok.chat_template = TRL_TEMPLATES[template_name].read_text(encoding="utf-8")
    return tok


def load_export(path: Path) -> Any:
    """The export as TRL users load it: ``datasets.load_dataset("json")`` (datasets >= 4 keeps
    messages of mixed shapes as JSON values, so no struct unification adds ``null`` keys to call
    arguments; re-inferring a schema from decoded rows, e.g. ``Dataset.from_list``, would)."""
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(path.parent / "hf"))


def export_rows(path: Path) -> list[dict[str, Any]]:
    """The decoded rows of :func:`load_export`."""
    return list(load_export(path))


def agentmill_tokens(exported, tokenizer, template_name: str) -> dict[str, Any]:
    """``train.data.tokenize_sample`` of every sample with the built-in template, by sample id."""
    from train.data import TokenizedSample, load_samples, tokenize_sample
    from train.templates import load_template

    template = load_template(template_name)
    result = {}
    for sample in load_samples([str(exported[0])]):
        tokens = tokenize_sample(sample, tokenizer, template, 1024)
        assert isinstance(tokens, TokenizedSample), tokens
        result[sample.id] = tokens
    return result


def mismatches(ours: Any, ids: list[int], labels: list[int], tokenizer: Any) -> list[str]:
    """Where TRL's ``(ids, labels)`` differ from agentmill's tokens: ``[]`` when they agree.

    agentmill drops messages after the last supervised one; whatever TRL renders beyond them must
    be unsupervised."""
    n = len(ours.input_ids)
    if ids[:n] != ours.input_ids:
        first = next((t for t, (a, b) in enumerate(zip(ids, ours.input_ids, strict=False)) if a != b), min(n, len(ids)))
        return [f"input_ids differ from token {first}: {tokenizer.decode(ids[first : first + 12])!r}"]
    found = [
        f"token {t} {tokenizer.convert_ids_to_tokens(ids[t])!r}: TRL {'trains' if labels[t] != -100 else 'masks'} it"
        for t in range(n)
        if labels[t] != ours.labels[t]
    ]
    found += [
        f"token {t} after agentmill's last supervised turn is trained by TRL"
        for t in range(n, len(ids))
        if labels[t] != -100
    ]
    return found


def test_the_export_holds_the_tool_sample_as_trl_reads_it(exported):
    rows = {row["id"]: row for row in map(json.loads, exported[1].read_text(encoding="utf-8").splitlines())}
    weather = next(row for row in rows.values() if row.get("tools"))
    assistants = [m for m in weather["messages"] if m["role"] == "assistant"]
    parallel = assistants[0]["tool_calls"]
    assert [c["function"]["name"] for c in parallel] == ["get_weather", "get_weather"]
    assert parallel[0]["function"]["arguments"] == {"city": "Paris"}  # objects, as chat templates take them
    results = [m for m in weather["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == [c["id"] for c in parallel] + [assistants[2]["tool_calls"][0]["id"]]
    assert all(m["train"] for m in assistants)
    acknowledged = next(row for row in rows.values() if not row.get("tools"))
    assert [m["train"] for m in acknowledged["messages"] if m["role"] == "assistant"] == [False, True]


def test_the_trl_template_renders_what_agentmill_trains_on(exported, tokenizer, template_name):
    """Byte for byte the built-in template, on every prefix, with and without the generation prompt."""
    from train.templates import load_template

    builtin = load_template(template_name).source
    for row in export_rows(exported[1]):
        messages, tools = row["messages"], row.get("tools")
        for end in range(1, len(messages) + 1):
            for prompt in (False, True):
                kwargs = {"tools": tools, "tokenize": False, "add_generation_prompt": prompt}
                ours = tokenizer.apply_chat_template(messages[:end], chat_template=builtin, **kwargs)
                assert tokenizer.apply_chat_template(messages[:end], **kwargs) == ours


@pytest.mark.slow
def test_trl_sft_trainer_masks_agree_with_agentmill_labels(exported, tokenizer, template_name, tmp_path):
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    from tests.tiny_model import tiny_llama_for

    ours = agentmill_tokens(exported, tokenizer, template_name)
    rows = export_rows(exported[1])
    assert {row["id"] for row in rows} == set(ours)
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        assistant_only_loss=True,
        max_length=1024,
        max_steps=2,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        shuffle_dataset=False,
        seed=0,
    )
    trainer = SFTTrainer(
        model=tiny_llama_for(tokenizer),
        args=args,
        train_dataset=load_export(exported[1]),
        processing_class=tokenizer,
    )
    assert trainer.chat_template is None  # TRL uses the template as given: it has generation markers
    assert is_chat_template_stop_token_trained(tokenizer)  # <|im_end|> / <|eot_id|> is in the mask
    prepared = list(trainer.train_dataset)
    assert len(prepared) == len(rows)
    for row, trl_row in zip(rows, prepared, strict=True):
        mine = ours[row["id"]]
        assert mismatches(mine, trl_row["input_ids"], trl_row["labels"], tokenizer) == [], row["id"]
        assert sum(label != -100 for label in trl_row["labels"][1:]) == mine.n_supervised
    output = trainer.train()
    assert output.global_step == 2 and math.isfinite(output.training_loss)


@pytest.mark.slow
def test_trl_completion_only_loss_trains_the_last_turn_and_what_follows_its_end(
    exported, tokenizer, template_name, tmp_path
):
    """TRL's other masking path, prompt-completion data with ``completion_only_loss``, on the plain
    built-in template (no markers needed): the same tokens as ``train/sft.py``, but only the last
    assistant turn is supervised, as ``train/sft.py`` labels it plus whitespace that
    ``train/sft.py`` leaves as context: what the template prints after the end-of-turn marker
    (chatml: a newline; llama3: nothing) and, where the tokenizer merges differently at the
    prompt's end, the header's newlines."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from train.templates import load_template
    from train.tiny import tiny_llama_config

    ours = agentmill_tokens(exported, tokenizer, template_name)
    path = tmp_path / "prompt_completion.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for row in export_rows(exported[1]):
            messages = [{k: v for k, v in m.items() if k != "train"} for m in row["messages"]]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            record = {"id": row["id"], "prompt": messages[:last], "completion": [messages[last]], "tools": row["tools"]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = load_template(template_name).source
    config = tiny_llama_config(len(plain), pad_token_id=plain.pad_token_id, hidden_size=32, intermediate_size=64)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=1024, use_cpu=True, report_to="none")
    model = LlamaForCausalLM(LlamaConfig(**config))
    trainer = SFTTrainer(model=model, args=args, train_dataset=load_export(path), processing_class=plain)
    end, after = END_OF_TURN[template_name]
    for row in trainer.train_dataset:
        mine, ids, labels = ours[row["id"]], row["input_ids"], row["labels"]
        assert ids == mine.input_ids
        supervised = [t for t in range(len(ids)) if labels[t] != -100]
        last_turn = [t for t in range(supervised[0], len(ids)) if mine.labels[t] != -100]
        assert plain.decode(ids[last_turn[-1]]) == end and plain.decode(ids[last_turn[-1] + 1 :]) == after
        # TRL's completion starts where the tokens of the prompt alone and of prompt + completion
        # diverge: a tokenizer that splits the header's trailing "\n\n" differently before the
        # answer (this tiny BPE with llama3) puts those newline tokens in the completion too.
        before = range(supervised[0], last_turn[0])
        assert not before or plain.decode([ids[t] for t in before]).strip() == ""
        assert supervised == [*before, *last_turn, *range(last_turn[-1] + 1, len(ids))]


def test_a_lost_loss_flag_shows_as_a_mask_difference(exported, tokenizer, template_name):
    """The check has teeth: without the export's ``train`` flags TRL supervises the unsupervised
    acknowledgement, and exactly its tokens ("Ok." and its end-of-turn marker) differ."""
    ours = agentmill_tokens(exported, tokenizer, template_name)
    for row in export_rows(exported[1]):
        if row.get("tools"):
            continue
        messages = [{k: v for k, v in m.items() if k != "train"} for m in row["messages"]]
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(encoded["input_ids"])
        labels = [t if keep else -100 for t, keep in zip(ids, encoded["assistant_masks"], strict=True)]
        found = mismatches(ours[row["id"]], ids, labels, tokenizer)
        trained = "".join(tokenizer.convert_tokens_to_string([f.split("'")[1]]) for f in found)
        assert found and trained == "Ok." + END_OF_TURN[template_name][0], found


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory) -> tuple[list[Any], list[dict[str, Any]], Any]:
    """``(samples, export rows, tokenizer)`` of the demo pipeline's shards (all kinds of samples:
    native calls, calls spelled in text, negatives, general chat)."""
    from tests.train_helpers import demo_shards
    from train.data import load_samples
    from train.templates import ensure_special_tokens, load_template
    from train.tiny import train_tokenizer

    shards = demo_shards(tmp_path_factory.getbasetemp())
    path = tmp_path_factory.mktemp("demo-export") / "demo.jsonl"
    command = [sys.executable, "-m", "pipelines.cli", "export", str(shards), "--to", "openai", "--output", str(path)]
    command += ["--arguments", "object", "--loss-key", "train", "--with-ids"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    samples = load_samples([str(shards)])
    tok = train_tokenizer([m.content for s in samples for m in s.messages], vocab_size=512)
    ensure_special_tokens(tok, load_template("chatml"))
    tok.chat_template = TRL_TEMPLATES["chatml"].read_text(encoding="utf-8")
    return samples, export_rows(path), tok


def demo_mismatches(demo_export, withheld: bool) -> dict[str, list[str]]:
    """Where TRL's tokens and mask of a demo sample's export differ from ``train/sft.py``'s (chatml,
    the data set's call convention), per sample whose tools the trainer does (``withheld``) or
    does not withhold from the template; only samples with a difference are listed.

    The trainer withholds a sample's tools when the sample, or the whole data set, spells its
    calls in text (``schemas.chat.template_tools``): the demo's convention is ``text``."""
    from schemas.chat import call_convention, template_tools
    from train.data import TokenizedSample, tokenize_all
    from train.templates import load_template

    samples, rows, tok = demo_export
    tokens, _ = tokenize_all(samples, tok, load_template("chatml"), 100_000)
    ours = {t.id: t for t in tokens if isinstance(t, TokenizedSample)}
    convention = call_convention(samples)
    by_id = {row["id"]: row for row in rows}
    found = {}
    for sample in samples:
        if (bool(sample.tools) and template_tools(sample, convention) is None) != withheld or sample.id not in ours:
            continue
        row = by_id[sample.id]
        encoded = tok.apply_chat_template(
            row["messages"], tools=row.get("tools") or None, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(encoded["input_ids"])
        labels = [t if keep else -100 for t, keep in zip(ids, encoded["assistant_masks"], strict=True)]
        problems = mismatches(ours[sample.id], ids, labels, tok)
        if problems:
            found[f"{sample.id} ({sample.lineage.derivation})"] = problems[:3]
    return found


@pytest.mark.slow
def test_demo_samples_whose_tools_the_trainer_renders_export_to_the_tokens_trained_on(demo_export):
    """Tool-less samples of every kind (general chat, acknowledgements, no-tools negatives, instruction pairs)."""
    assert demo_mismatches(demo_export, withheld=False) == {}


@pytest.mark.slow
def test_demo_samples_whose_tools_the_trainer_withholds_export_to_the_tokens_trained_on(demo_export):
    """Samples that spell their calls in text: the export withholds their tools and keeps their
    calls as text, as the trainer does (pipelines/export.py follows schemas.chat)."""
    assert demo_mismatches(demo_export, withheld=True) == {}
