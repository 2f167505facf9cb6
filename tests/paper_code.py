# ruff: noqa  (the paper's code is kept as it was written)
"""The paper's published code, re-run by the tests that check ``--protocol paper`` against it.

Copied from yuhui-zh15/VLMClassifier at commit d06979295059d01cf3810d30839750399f9d0a88
(2024-10-18): the statements that decide a result, kept as written (names, order, calls).
Every change is marked ``# CHANGED:`` with the reason; none changes what is computed. The
paper's scripts themselves were also run on a saved tiny LLaVA (device and ``device_map``
edited out) and agree with these functions; see tests/test_paper_fidelity.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

# ---------------------------------------------------------------- imagewikiqa/eval.ipynb


def parse_multi_choice_response(
    response, all_choices, index2ans, fallback: Callable[[list[str]], str | None] = random.choice
):  # CHANGED: ``fallback`` replaces the literal ``random.choice`` (a test passes a sentinel)
    """
    Parse the prediction from the generated response.
    Return the predicted index e.g., A, B, C, D.
    """
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "  # add space to avoid partial match

    index_ans = True
    ans_with_brack = False
    candidates = []
    for choice in all_choices:  # e.g., (A) (B) (C) (D)
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True

    if len(candidates) == 0:
        for choice in all_choices:  # e.g., A B C D
            if f" {choice} " in response:
                candidates.append(choice)

    # if all above doesn't get candidates, check if the content is larger than 5 tokens and try to parse the example
    if len(candidates) == 0 and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False  # it's content ans.

    if len(candidates) == 0:  # still not get answer, randomly choose one.
        pred_index = fallback(all_choices)  # CHANGED: was random.choice(all_choices)
    elif len(candidates) > 1:
        start_indexes = []
        if index_ans:
            if ans_with_brack:
                for can in candidates:
                    index = response.rfind(f"({can})")
                    start_indexes.append(index)  # -1 will be ignored anyway
            else:
                for can in candidates:
                    index = response.rfind(f" {can} ")
                    start_indexes.append(index)
        else:
            for can in candidates:
                index = response.lower().rfind(index2ans[can].lower())
                start_indexes.append(index)
        # get the last one
        pred_index = candidates[np.argmax(start_indexes)]
    else:  # if only one candidate, use it.
        pred_index = candidates[0]

    return pred_index


def evaluate_item(item: dict, fallback: Callable[[list[str]], str | None]) -> str | None:
    """The body of the notebook's ``evaluate`` loop for one output line (its letter)."""
    if "pred" in item:
        gen = item["pred"]
    elif "output" in item:
        gen = item["output"]
    else:
        gen = item["text"]
    all_choices = ["A", "B", "C", "D"]
    index2ans = {}
    if "prompt" in item:
        choices = item["prompt"].split("\n")[1:5]
    else:
        choices = item["text"].split("\n")[1:5]
    choices = [choice[3:] for choice in choices]
    for idx, choice in enumerate(choices):
        index2ans[all_choices[idx]] = choice
    return parse_multi_choice_response(gen, all_choices, index2ans, fallback)


# ------------------------------------------- main_results/main.py and imagewikiqa/main.py


def generate_batch(processor, model, images, prompts, max_new_tokens: int, marker: str):
    """One batch of ``main()``: generate, decode everything, read after the family's marker
    (``[/INST]`` for Mistral, ``Answer:`` for BLIP, else ``ASSISTANT:``)."""
    inputs = processor(
        text=prompts, images=images, padding=True, return_tensors="pt"
    )  # CHANGED: no .to("cuda")
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens
    )
    generated_text = processor.batch_decode(output, skip_special_tokens=True)
    outputs, preds = [], []
    for text in generated_text:
        outputs.append(text)
        preds.append(text.split(marker)[-1].strip())
    return outputs, preds


def closed_world_questions(data, classes, seed, n_labels, batch_size, init_prompt=None):
    """``main()``'s closed-world questions, image by image: the split shuffled with the seed,
    then each image's K-1 other labels drawn from the same global stream, in order.
    Returns (shuffled data, the question of each item, in that order)."""
    random.seed(seed)
    random.shuffle(data)
    if init_prompt is None:
        init_prompt = "What type of object is in this photo?"
    asked = []
    for i in range(0, len(data), batch_size):  # CHANGED: range for trange
        batch = data[i : i + batch_size]
        choices = []
        for item in batch:
            label = item["label"]
            other_choices = random.sample(
                sorted(list(set(classes) - set([label]))), n_labels - 1
            )
            shuffled_choices = [label] + other_choices

            random.shuffle(shuffled_choices)
            choices.append(shuffled_choices)
        questions = [
            f"{init_prompt} Choose one from \"{', '.join(choice)}\"."
            for choice in choices
        ]
        asked.extend(questions)
    return data, asked


# ------------------------------- training_analysis/llava: LLaVA's vicuna_v1 and preprocess_v1
# The paper trains with LLaVA's train.py (copied into training_analysis/llava/train.py) and
# evaluates with model_vqa.py --conv-mode vicuna_v1; both use LLaVA's own helpers, copied here
# from haotian-liu/LLaVA at c121f0432da27facab705978f83c4ada465e46fd (llava/conversation.py,
# llava/mm_utils.py, llava/constants.py).

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def vicuna_v1_prompt(messages):
    """``conv_vicuna_v1.get_prompt()`` (SeparatorStyle.TWO, sep " ", sep2 "</s>") for
    ``messages`` [(role, message or None)]."""
    system, sep, sep2 = VICUNA_V1_SYSTEM, " ", "</s>"
    seps = [sep, sep2]
    ret = system + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split('<image>')]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep]*len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])

    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def preprocess_v1_one(conversation, tokenizer):
    """train.py's ``preprocess_v1`` for one conversation with an image: (input_ids, targets).
    CHANGED: lists for tensors; one conversation; the multi-round tokenizer fix-up (rounds
    after the first) is not reached by a one-round conversation."""
    input_ids = tokenizer_image_token(conversation, tokenizer)
    target = list(input_ids)
    sep = " " + "ASSISTANT" + ": "
    total_len = len(target)
    rounds = conversation.split("</s>")
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX] * cur_len
    for i, rou in enumerate(rounds):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou, tokenizer))
        instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
        target[cur_len : cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * (total_len - cur_len)
    if cur_len != total_len:  # CHANGED: model_max_length check dropped (short conversations)
        target[:] = [IGNORE_INDEX] * total_len
    return input_ids, target
