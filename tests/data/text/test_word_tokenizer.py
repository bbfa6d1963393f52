"""The corpus-built word tokenizer behaves like the LLaMA setup the prompts expect."""

from crab_jax.data.text.word_tokenizer import build_word_tokenizer
from crab_jax.families.crab.prompts import llama2_chat, load_tokenizer, tokenize_pair
from crab_jax.families.crab.tokens import ADDED_TOKENS


def test_round_trip_of_a_chat_prompt_and_tagged_answer(tmp_path):
    instruction = llama2_chat("This is a video:\n<video_start><video><video_end>\nWhich object is sounding?")
    target = "So the answer is <answer> left </answer>.</s>"
    folder = build_word_tokenizer([instruction, target, "another sentence"], tmp_path / "tok", ADDED_TOKENS)
    tok = load_tokenizer(folder)
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert tok.pad_token_id == 2 and tok.padding_side == "left"
    p = tokenize_pair(tok, instruction, target)
    assert tok.unk_token_id not in p.input_ids.tolist()
    assert p.input_ids[0] == tok.bos_token_id and p.input_ids[-1] == tok.eos_token_id
    video = tok.convert_tokens_to_ids("<video>")
    assert video in p.input_ids.tolist() and video >= len(tok.get_vocab()) - 17
    answer = tok.decode(p.input_ids[p.num_prompt_tokens:-1])
    assert answer == "So the answer is <answer> left </answer>."
    # the chat template renders what llama2_chat builds
    rendered = tok.apply_chat_template([{"role": "system", "content": "You are a helpful assistant."},
                                        {"role": "user", "content": "Which object is sounding?"}], tokenize=False)
    assert rendered == llama2_chat("Which object is sounding?")


def test_unknown_words_map_to_unk(tmp_path):
    tok = load_tokenizer(build_word_tokenizer(["known words only"], tmp_path / "tok", ADDED_TOKENS))
    ids = tok.convert_tokens_to_ids(tok.tokenize("known stranger"))
    assert ids[1] == tok.unk_token_id and ids[0] != tok.unk_token_id
