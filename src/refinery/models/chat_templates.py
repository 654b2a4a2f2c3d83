"""The chat templates and special tokens of real model families, so a tiny local checkpoint formats chats exactly as
its full-size namesake does and code written against one meets the other's markers, turn ends and BOS rules.

Each template is the family's public Jinja template (named in the comment above it), kept verbatim in the paths it
renders; tool-calling branches are left out except for Qwen3, whose reasoning handling depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refinery.errors import ConfigError

# Qwen/Qwen2-7B-Instruct tokenizer_config.json (ChatML; a default system turn when none is given).
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen/Qwen3-8B tokenizer_config.json: reasoning after the last user query is rendered as <think>...</think> (an
# empty block for the final assistant turn), earlier turns' reasoning is dropped, and enable_thinking=False opens
# the generation with an empty think block.
QWEN3 = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with \
function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\
\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and \
not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1]\
.lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + \
'\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (headers, contents trimmed, <|eot_id|> ends a turn).
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json without its tool branches: the system message joins the
# LAST user turn, roles must alternate, an assistant turn ends with </s>; there is no generation prompt.
MISTRAL = """\
{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate \
user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- set ns.index = ns.index + 1 %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial \
optional system message!") }}
    {%- endif %}
{%- endfor %}"""

# google/gemma-2-9b-it tokenizer_config.json (assistant is named "model", contents trimmed), with the system message
# folded into the first user turn as google/gemma-3-*-it's template does (Gemma-2's own raises on a system role).
GEMMA2 = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = "" %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- if (message['role'] == 'assistant') %}
        {%- set role = "model" %}
    {%- else %}
        {%- set role = message['role'] %}
    {%- endif %}
    {{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\\n' }}
{%- endif %}"""

# microsoft/Phi-3.5-mini-instruct tokenizer_config.json (Phi-3-mini's with a system role). Its closing eos_token is
# <|endoftext|>, written out here because this tokenizer's eos is the turn end <|end|>.
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ '<|endoftext|>' }}{% endif %}"
)

# deepseek-ai/DeepSeek-R1-Distill-Qwen-7B tokenizer_config.json without its tool branches: system messages are joined
# at the start, earlier reasoning (up to </think>) is dropped from assistant turns, and the generation prompt opens
# the reasoning with "<think>\n" (the January 2025 revision that makes the model think).
DEEPSEEK_R1 = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)


@dataclass(frozen=True)
class ChatFamily:
    """A family's chat template and the tokens it relies on (all single ids in the tokenizer)."""

    name: str
    template: str
    eos: str  # the turn end: generation stops here
    pad: str
    bos: str | None = None
    add_bos: bool = False  # the tokenizer prepends bos to plain text, as the family's own does
    end_of_text: str | None = None  # a second stop token (document end), listed in generation_config's eos ids
    specials: tuple[str, ...] = ()  # further special tokens (skipped when decoding with skip_special_tokens)
    added: tuple[str, ...] = field(default=())  # single-id tokens that are NOT special (kept in decoded text)
    generation_prompt: str = ""  # what add_generation_prompt=True appends (documentation and tests)

    def tokens(self) -> list[str]:
        """Every special token, in id order (ids 0..n-1 of the trained tokenizer)."""
        seen: dict[str, None] = {}
        for t in (self.pad, self.bos, self.eos, self.end_of_text, *self.specials):
            if t is not None:
                seen.setdefault(t)
        return list(seen)


TEMPLATES: dict[str, ChatFamily] = {
    "qwen2": ChatFamily("qwen2", QWEN2, eos="<|im_end|>", pad="<|endoftext|>", end_of_text="<|endoftext|>",
                        specials=("<|im_start|>",), generation_prompt="<|im_start|>assistant\n"),
    "qwen3": ChatFamily("qwen3", QWEN3, eos="<|im_end|>", pad="<|endoftext|>", end_of_text="<|endoftext|>",
                        specials=("<|im_start|>",),
                        added=("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
                               "</tool_response>"),
                        generation_prompt="<|im_start|>assistant\n"),
    "llama3": ChatFamily("llama3", LLAMA3, eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                         bos="<|begin_of_text|>", add_bos=True, end_of_text="<|end_of_text|>",
                         specials=("<|start_header_id|>", "<|end_header_id|>"),
                         generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "mistral": ChatFamily("mistral", MISTRAL, eos="</s>", pad="<pad>", bos="<s>", add_bos=True,
                          specials=("<unk>", "[INST]", "[/INST]")),
    "gemma2": ChatFamily("gemma2", GEMMA2, eos="<end_of_turn>", pad="<pad>", bos="<bos>", add_bos=True,
                         end_of_text="<eos>", specials=("<unk>", "<start_of_turn>"),
                         generation_prompt="<start_of_turn>model\n"),
    "phi3": ChatFamily("phi3", PHI3, eos="<|end|>", pad="<|endoftext|>", bos="<s>", end_of_text="<|endoftext|>",
                       specials=("<unk>", "<|system|>", "<|user|>", "<|assistant|>"),
                       generation_prompt="<|assistant|>\n"),
    "deepseek-r1": ChatFamily("deepseek-r1", DEEPSEEK_R1, eos="<｜end▁of▁sentence｜>", pad="<｜▁pad▁｜>",
                              bos="<｜begin▁of▁sentence｜>", add_bos=True, specials=("<｜User｜>", "<｜Assistant｜>"),
                              added=("<think>", "</think>"), generation_prompt="<｜Assistant｜><think>\n"),
}


def get_family(name: str) -> ChatFamily:
    """The chat family called ``name``; a ConfigError naming the known ones otherwise."""
    if name not in TEMPLATES:
        raise ConfigError(f"unknown chat template '{name}' (supported: {', '.join(TEMPLATES)})")
    return TEMPLATES[name]


# ---- where a chat template puts the assistant turn -------------------------------------------------------------
THINK_OPEN = "<think>"


def _content(message: dict) -> str:
    c = message.get("content")
    return c if isinstance(c, str) else ""


def generation_prompt_end(prompt: str, full: str, last_content: str) -> int | None:
    """Where, in ``full`` (the conversation rendered with the assistant's answer), the generation ``prompt``
    ends: ``len(prompt)`` when it is a prefix; otherwise the end of the longest tail of ``prompt`` that ``full``
    contains, provided that tail spans the whole last message (Mistral moves the system message into the last
    user turn of a prompt only, so only the prompt's ending is shared). None when no such anchor exists."""
    if full.startswith(prompt):
        return len(prompt)
    lo, hi = 0, len(prompt)  # the largest k with prompt[-k:] in full (monotone in k)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if prompt[-mid:] in full:
            lo = mid
        else:
            hi = mid - 1
    if lo <= len(last_content.strip()):
        return None
    return full.rindex(prompt[-lo:]) + lo


def assistant_turn(tokenizer, messages: list[dict], response: str) -> tuple[str, str | None]:
    """``(generation prompt, the assistant turn after it)`` as the tokenizer's template renders them: the turn is
    the template's own text up to and including the turn end (Mistral's leading space, Qwen3's empty think block,
    contents trimmed where the template trims them; nothing after the turn end). The turn is None where the
    template does not render the response whole (DeepSeek-R1 drops the last turn's reasoning) or has no anchor."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    eos = tokenizer.eos_token or ""
    try:
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                             tokenize=False)
    except Exception:  # a template that refuses the turn (e.g. roles must alternate)
        return prompt, None
    start = generation_prompt_end(prompt, full, _content(messages[-1]) if messages else "")
    if start is None or not eos or eos not in full[start:]:
        return prompt, None
    tail = full[start:]
    tail = tail[: tail.index(eos) + len(eos)]
    return prompt, tail if response.strip() in tail else None


def sft_texts(tokenizer, messages: list[dict], response: str) -> tuple[str, str]:
    """``(prompt, response)`` texts of one SFT example: the generation prompt (what the model sees at inference)
    and the assistant turn the template renders after it; where the template does not render the response whole,
    the raw response with the turn end, minus a ``<think>`` the generation prompt already opened (DeepSeek-R1)."""
    prompt, turn = assistant_turn(tokenizer, messages, response)
    if turn is not None:
        return prompt, turn
    if prompt.rstrip().endswith(THINK_OPEN):
        opener = prompt[prompt.rindex(THINK_OPEN):]  # "<think>\n"
        for head in (opener, THINK_OPEN):
            if response.startswith(head):
                response = response[len(head):]
                break
    return prompt, response + (tokenizer.eos_token or "")


def _common_prefix(tokenizer, a: str, b: str) -> int:
    """Characters of ``a`` that ``b`` shares, cut back to a token boundary of ``a`` (``<|assistant|>`` and
    ``<|endoftext|>`` share ``<|`` as text, not as tokens)."""
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    try:
        offsets = tokenizer(a, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow tokenizers have no offsets
        return n
    return next((start for start, end in offsets if start < n < end), n)


def user_turn_end(tokenizer, messages: list[dict], full: str) -> str:
    """The text of ``full`` (the conversation rendered with an answer) up to the end of the last user turn, i.e.
    without the assistant header: ArmoRM's gating position is its last token. Found from where the generation
    prompt ends in ``full`` minus the header the generation prompt adds (the part of it a render without the
    generation prompt lacks; Phi-3's prompt-only render ends in <|endoftext|>, so neither is a prefix of the
    other); where there is no anchor, the render without generation prompt, cut to what ``full`` shares."""
    gen = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bare = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    start = generation_prompt_end(gen, full, _content(messages[-1]) if messages else "")
    if start is None:
        return full[:_common_prefix(tokenizer, full, bare)]
    header, region = gen[_common_prefix(tokenizer, gen, bare):], full[:start]
    for k in range(len(header), 0, -1):  # DeepSeek-R1's header "<｜Assistant｜><think>\n" is only opened in full
        if region.endswith(header[:k]):
            return region[:-k]
    return region
