"""The user's data: every file and record format, the chat template, and each malformed case."""

import json

import pytest
from transformers import AutoModelForCausalLM

from gradpruner.tasks.chat import Turn, chat_features
from gradpruner.cli import main
from gradpruner.tasks.examples import (ChatExample, GenExample, MCExample, generation_prompt, parse_record,
                             training_features, with_chat_template)
from gradpruner.errors import GradPrunerError
from gradpruner.tasks import resolve_task
from gradpruner.tasks import task_from_data
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What color is the sky?"},
                     {"role": "assistant", "content": "blue"},
                     {"role": "user", "content": "Which animal barks?"},
                     {"role": "assistant", "content": "a dog"}]}
CONV_PC = {"prompt": [{"role": "user", "content": "Goal: open a jar."}],
           "completion": [{"role": "assistant", "content": "twist the lid"}]}
PLAIN = {"prompt": "Question: What color is the sky? Answer:", "completion": "blue"}
CHOICE = {"prompt": "Question: What color is the sky? Answer:", "choices": ["blue", "green"],
          "answer": 0}


def chat_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def conversations(n: int) -> list[dict]:
    colors = ["blue", "green", "red", "black"]
    return [{"messages": [{"role": "user", "content": f"Question {i}: name a color."},
                          {"role": "assistant", "content": colors[i % 4]}]} for i in range(n)]


def test_record_formats_are_told_apart_by_their_fields():
    chat = parse_record(CHAT, "f:1")
    assert isinstance(chat, ChatExample) and [t.trained for t in chat.turns] == [False, False, True,
                                                                                 False, True]
    assert chat.reference() == "a dog" and chat.prompt_turns()[-1].content == "Which animal barks?"
    conv = parse_record(CONV_PC, "f:2")
    assert conv.turns == (Turn("user", "Goal: open a jar."), Turn("assistant", "twist the lid", True))
    assert parse_record(PLAIN, "f:3") == GenExample(PLAIN["prompt"], "blue")
    assert parse_record(CHOICE, "f:4") == MCExample.from_question(CHOICE["prompt"], ["blue", "green"], 0)
    # columns other than the format's, and empty (None) columns of a table, are ignored
    assert parse_record({**PLAIN, "id": 7, "messages": None}, "f:5") == GenExample(PLAIN["prompt"], "blue")
    # a prompt's assistant turns (few-shot examples) are not trained on
    shots = {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "c"}],
             "completion": [{"role": "assistant", "content": "d"}]}
    assert [t.trained for t in parse_record(shots, "f:6").turns] == [False, False, False, True]


@pytest.mark.parametrize("record,message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]},
     "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
     r"messages\[1\] \(user\) has empty"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]},
     "non-text content"),
    ({"messages": [{"role": "user"}]}, "'role' and 'content'"),
    ({"messages": []}, "non-empty list"),
    ({"messages": "hello"}, "non-empty list"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "starts with the assistant"),
    ({"prompt": [{"role": "user", "content": "hi"}], "completion": "x"}, "must be one too"),
    ({"prompt": "hi", "completion": [{"role": "assistant", "content": "x"}]}, "both as text"),
    ({"prompt": [{"role": "user", "content": "hi"}],
      "completion": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ({"text": "plain language modelling"}, "needs 'messages'"),
])
def test_malformed_conversations_name_the_record(record, message):
    with pytest.raises(GradPrunerError, match=message) as err:
        parse_record(record, "chats.jsonl:7")
    assert str(err.value).startswith("chats.jsonl:7: ") and "\n" not in str(err.value)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_file_format_reads_the_same_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    records = conversations(6)
    expected = [parse_record(r, "") for r in records]
    write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "array.json").write_text(json.dumps(records))
    write_jsonl(tmp_path / "lines.json", records)  # what datasets' to_json writes
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    pcsv.write_csv(pa.table({"messages": [json.dumps(r["messages"]) for r in records]}),
                   tmp_path / "d.csv")
    for name in ("d.jsonl", "array.json", "lines.json", "d.parquet", "d.csv"):
        task = task_from_data(str(tmp_path / name), eval_fraction=0.5)
        assert task.kind == "gen"
        got = task.train_examples() + task.eval_examples()
        assert sorted(got, key=repr) == sorted(expected, key=repr), name
    plain = tmp_path / "plain.csv"
    pcsv.write_csv(pa.table({"prompt": ["a", "b", "c"], "completion": ["x", "y", "z"]}), plain)
    assert task_from_data(str(plain)).kind == "gen"


def test_datasets_folders_and_dataset_ids(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    train, test = conversations(8), conversations(12)[8:]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                                   "test": datasets.Dataset.from_list(test)})
    splits.save_to_disk(str(tmp_path / "saved"))
    task = task_from_data(str(tmp_path / "saved"))
    assert task.train_examples() == [parse_record(r, "") for r in train]
    assert task.eval_examples() == [parse_record(r, "") for r in test]  # the folder's test split
    datasets.Dataset.from_list(train).save_to_disk(str(tmp_path / "one"))
    assert len(task_from_data(str(tmp_path / "one"), eval_fraction=0.25).eval_examples()) == 2
    # a folder of data files goes through datasets.load_dataset, as a Hub id does
    (tmp_path / "hub" / "data").mkdir(parents=True)
    write_jsonl(tmp_path / "hub" / "data" / "train.jsonl", train)
    write_jsonl(tmp_path / "hub" / "data" / "test.jsonl", test)
    loaded = task_from_data(str(tmp_path / "hub"))
    assert len(loaded.train_examples()) == 8 and len(loaded.eval_examples()) == 4
    # a Hub id (offline here: the Hub's answer is stood in for) names the data in the model card
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name: asked.append(name) or splits)
    hub = task_from_data("acme/chats")
    assert asked == ["acme/chats"] and hub.datasets == ("acme/chats",)
    assert hub.eval_examples() == [parse_record(r, "") for r in test]
    assert task.datasets == ()
    bad = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "only a question"}]}])
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(GradPrunerError, match=r"bad.* row 1: no assistant turn"):
        task_from_data(str(tmp_path / "bad"))


@pytest.mark.parametrize("name,content,message", [
    ("missing.parquet", None, "data file not found"),
    ("broken.parquet", b"not parquet", "cannot read it as parquet"),
    ("broken.json", b"[{\"prompt\": ", "invalid JSON"),
    ("object.json", b'{"prompt": "p"}\n{"x": 1', "invalid JSON"),
    ("scalar.json", b"[3]", "record 1: expected a JSON object"),
    ("empty.csv", b"prompt,completion\n", "no examples"),
])
def test_broken_files_get_one_line(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(GradPrunerError, match=message) as err:
        task_from_data(str(tmp_path / name))
    assert "\n" not in str(err.value)


def test_labels_cover_exactly_the_assistant_tokens():
    tok = chat_tokenizer()
    chat = parse_record(CHAT, "f:1")
    feats = chat_features(tok, chat.turns, max_length=512, where="f:1")
    rendered = tok.apply_chat_template(CHAT["messages"], tokenize=False)
    encoded = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert feats["input_ids"] == encoded["input_ids"]
    # the assistant turns found in the text by hand: content and end-of-turn marker
    spans = []
    for answer in ("blue", "a dog"):
        start = rendered.index(f"assistant\n{answer}</s>") + len("assistant\n")
        spans.append((start, start + len(f"{answer}</s>\n")))
    expected = [i if any(a <= begin < b for a, b in spans) else -100
                for i, (begin, _) in zip(encoded["input_ids"], encoded["offset_mapping"])]
    assert feats["labels"] == expected
    trained = [i for i in feats["labels"] if i != -100]
    # (a newline is the tiny vocabulary's unknown token)
    assert tok.decode(trained).replace(" ", "") == "blue</s><unk>adog</s><unk>"
    assert trained.count(tok.convert_tokens_to_ids("</s>")) == 2
    # the evaluation prompt is everything before the last answer, with the generation prompt
    prompt = generation_prompt(tok, chat, 1024)
    assert feats["input_ids"][:len(prompt)] == prompt
    assert feats["labels"][len(prompt)] != -100 and feats["labels"][len(prompt) - 1] == -100


def test_truncation_keeps_the_start_and_refuses_an_empty_answer():
    tok = chat_tokenizer()
    chat = parse_record(CHAT, "chats.jsonl:3")
    full = chat_features(tok, chat.turns, 512)
    cut = chat_features(tok, chat.turns, len(full["input_ids"]) - 3)
    assert cut["input_ids"] == full["input_ids"][:-3] and cut["labels"] == full["labels"][:-3]
    first_label = next(i for i, label in enumerate(full["labels"]) if label != -100)
    with pytest.raises(GradPrunerError, match=r"chats.jsonl:3: nothing left to train on after "
                                              r"truncation to --max-length \d+"):
        training_features(tok, [chat], max_length=first_label)


def test_chat_template_modes():
    tok = chat_tokenizer()
    plain, choice, chat = (parse_record(r, "f:1") for r in (PLAIN, CHOICE, CHAT))
    assert with_chat_template(plain, "auto") == plain and with_chat_template(choice, "off") == choice
    on = with_chat_template(plain, "on")
    assert on.turns == (Turn("user", PLAIN["prompt"]), Turn("assistant", "blue", True))
    mc = with_chat_template(choice, "on")
    feat = training_features(tok, [mc])[0]
    ids = tok.apply_chat_template([{"role": "user", "content": CHOICE["prompt"]}], tokenize=False,
                                  add_generation_prompt=True)
    answer = tok("blue", add_special_tokens=False)["input_ids"]
    assert feat["input_ids"] == tok(ids, add_special_tokens=False)["input_ids"] + answer
    assert [label for label in feat["labels"] if label != -100] == answer
    with pytest.raises(GradPrunerError, match="f:1: a conversation needs the chat template"):
        with_chat_template(chat, "off")
    with pytest.raises(GradPrunerError, match="no chat template"):
        training_features(tiny_tokenizer(), [chat])


def test_a_template_that_rewrites_earlier_turns_is_refused():
    tok = tiny_tokenizer()
    # renders the last message differently from the others: turns are no prefix of the whole
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}<s>{% endif %}{{ m['content'] }}"
                         "\n{% endfor %}{% if add_generation_prompt %}<s>{% endif %}")
    with pytest.raises(GradPrunerError, match="f:1: .*turn by turn"):
        training_features(tok, [parse_record(CHAT, "f:1")])


def test_chat_template_off_refuses_conversations_before_any_model_loads(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chats.jsonl", conversations(4))
    with pytest.raises(GradPrunerError, match="chats.jsonl:1: a conversation needs"):
        resolve_task(None, str(data), None, "off")
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--data", str(data),
                 "--chat-template", "off"]) == 2
    assert "a conversation needs the chat template" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chat_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    tiny_model("llama").save_pretrained(root / "model")
    chat_tokenizer().save_pretrained(root / "model")
    write_jsonl(root / "chats.jsonl", conversations(40))
    return root


def test_a_chat_run_probes_prunes_finetunes_and_evaluates(chat_workspace, capsys):
    w = chat_workspace
    train = ["--steps", "3", "--batch-size", "4", "--lr", "5e-3", "--max-length", "64"]
    assert main(["probe", "--model", str(w / "model"), "--data", str(w / "chats.jsonl"),
                 "--out", str(w / "probe"), "--heldout", "8", *train]) == 0
    assert main(["prune", "--model", str(w / "model"), "--scores", str(w / "probe"),
                 "--data", str(w / "chats.jsonl"), "--layers", "2", "--merge", "none",
                 "--out", str(w / "pruned")]) == 0
    side = json.loads((w / "pruned" / "gradpruner.json").read_text())
    assert len(side["removed_layers"]) == 2
    assert main(["finetune", "--model", str(w / "pruned"), "--data", str(w / "chats.jsonl"),
                 "--out", str(w / "tuned"), *train]) == 0
    tuned = AutoModelForCausalLM.from_pretrained(w / "tuned")
    assert tuned.config.num_hidden_layers == 4
    capsys.readouterr()
    assert main(["eval", "--model", str(w / "tuned"), "--data", str(w / "chats.jsonl"),
                 "--limit", "3", "--out", str(w / "metrics.json")]) == 0
    metrics = json.loads((w / "metrics.json").read_text())
    assert metrics["n"] == 3 and 0 <= metrics["rouge_l"] <= 1


def test_a_record_too_long_to_train_stops_the_stage_with_nothing_written(chat_workspace, capsys):
    w = chat_workspace
    data = write_jsonl(w / "long.jsonl", conversations(8) + [{"messages": [
        {"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 20},
        {"role": "assistant", "content": "blue"}]}])
    code = main(["finetune", "--model", str(w / "model"), "--data", str(data), "--max-length", "64",
                 "--steps", "1", "--out", str(w / "too-long")])
    err = capsys.readouterr().err
    assert code == 2 and "long.jsonl:9: nothing left to train on after truncation to --max-length 64" in err
    assert not (w / "too-long").exists() and not list(w.glob(".too-long*"))
