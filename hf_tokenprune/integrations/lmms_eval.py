"""lmms-eval plugin: `--model hf_tokenprune` runs a pruned repo on lmms-eval's generation tasks.

lmms-eval finds the class through our `lmms_eval.models` entry point (`hf_tokenprune.integrations.lmms_eval_models`):

    lmms-eval --model hf_tokenprune --tasks mmmu_val \
        --model_args pretrained=<repo id or folder>,prune_budget=0.2,prune_method=divprune,batch_size=8

It is a chat model: each request's messages (the task's `doc_to_messages`, with the images and videos the task gives)
are rendered by the model's own chat template and processor, batched with left padding and answered by
`generate(..., prune_budget=..., prune_method=...)`. Per request it logs the visual tokens kept (of those the prompt
had) and the time to first token of the batch it ran in; `request_log=<file.jsonl>` also writes them as JSON lines,
and the run's means join lmms-eval's throughput metrics. This is the only module that imports lmms-eval.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.protocol import ChatMessages
from tqdm.auto import tqdm
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging

from ..evaluate import parse_budgets
from ..model import load_pruned_repo
from ..modeling.token_selectors import available_selectors

logger = logging.get_logger(__name__)


class FirstTokenClock(BaseStreamer):
    """Streamer that notes when `generate` emits the first new tokens (its first `put` is the prompt)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
        elif self.first_token_at is None:  # `generate` hands over tokens on the CPU, so the device has finished
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.first_token_at or time.perf_counter()) - self.start


def truncate_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of the stop strings `until` (lmms-eval's `generation_kwargs.until`)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class HFTokenPrune(lmms):
    """A pruned repo (a Hub id or a folder written by `save_pretrained`, adapter or merged form) as an lmms-eval model.

    Arguments (`--model_args key=value,...`): `pretrained` (required), `prune_budget` (float in (0, 1] or int >= 1;
    default: the repo's budget), `prune_method` (any registered selector; default: the repo's), `batch_size` (requests
    per `generate` call), `max_new_tokens` (when the task sets none), `device` (default: cuda when available),
    `dtype` ("auto", "bfloat16", ...), `attn_implementation`, `request_log` (JSON-lines file of the per-request log).
    A key given both in `--model_args` and as a CLI flag (`--batch_size`, `--device`) takes the `--model_args` value.
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        prune_budget: float | int | str | None = None,
        prune_method: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 128,
        device: str | None = None,
        dtype: str = "auto",
        attn_implementation: str | None = None,
        request_log: str | None = None,
        max_batch_size: int | None = None,  # lmms-eval passes it for `--batch_size auto`, which this class has not
    ) -> None:
        super().__init__()
        self.prune_kwargs = self._check_prune_arguments(prune_budget, prune_method)
        self.batch_size_per_gpu = self._check_positive_int(batch_size, "batch_size")
        self.max_new_tokens = self._check_positive_int(max_new_tokens, "max_new_tokens")
        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:  # data parallel: lmms-eval shares the requests out by rank
            device = f"cuda:{self.accelerator.local_process_index}"
            self._rank, self._world_size = self.accelerator.local_process_index, self.accelerator.num_processes
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        load_kwargs: dict[str, Any] = {"dtype": dtype}
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        model, self.processor = load_pruned_repo(str(pretrained), **load_kwargs)
        self.model = model.to(self._device).eval()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # batched generation appends after the prompt
        self.visual_token_ids = torch.tensor(self.model.prune_hooks.visual_token_ids(self.model), device=self._device)
        self.request_log = Path(request_log) if request_log else None
        if self.request_log is not None:
            self.request_log.parent.mkdir(parents=True, exist_ok=True)
            self.request_log.write_text("")

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lmms-eval's constructor: `--model_args` win over the CLI's `--batch_size` / `--device` (whose defaults
        lmms-eval always passes)."""
        from lmms_eval import utils

        cli = {key: value for key, value in (additional_config or {}).items() if value is not None}
        return cls(**{**cli, **utils.simple_parse_args_string(arg_string)})

    @staticmethod
    def _check_positive_int(value: Any, name: str) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        return value

    @staticmethod
    def _check_prune_arguments(budget: Any, method: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if budget is not None and budget != "":
            kwargs["prune_budget"] = parse_budgets(budget if isinstance(budget, str) else [budget], "prune_budget")[0]
        if method is not None and method != "":
            known = available_selectors()
            if method not in known:
                raise ValueError(f"`prune_method`: unknown method {method!r}; registered selectors: {known}")
            kwargs["prune_method"] = method
        return kwargs

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("hf_tokenprune runs generation tasks (generate_until) only")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("hf_tokenprune runs single-round generation tasks (generate_until) only")

    def _messages(self, request: Instance) -> ChatMessages:
        _context, doc_to_messages, _gen_kwargs, doc_id, task, split = request.args
        return ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))

    def _model_inputs(self, chats: list[ChatMessages]):
        """One padded batch: each chat rendered by the model's template, its images and videos in prompt order."""
        texts, images, videos = [], [], []
        for chat in chats:
            texts.append(
                self.processor.apply_chat_template(chat.to_hf_messages(), tokenize=False, add_generation_prompt=True)
            )
            chat_images, chat_videos, _audios = chat.extract_media()
            images += chat_images
            videos += chat_videos
        media = {"images": images or None, "videos": videos or None}
        return self.processor(text=texts, padding=True, return_tensors="pt", **media).to(self._device)

    def _generate_kwargs(self, task_kwargs: dict[str, Any]) -> dict[str, Any]:
        """lmms-eval's generation kwargs as `generate` takes them: greedy unless the task asks for a temperature."""
        kwargs = {key: value for key, value in task_kwargs.items() if key != "until"}
        kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        temperature = kwargs.pop("temperature", 0) or 0
        kwargs["do_sample"] = bool(kwargs.get("do_sample")) or temperature > 0
        if kwargs["do_sample"]:
            kwargs["temperature"] = temperature or 1.0
        else:
            for sampling_only in ("temperature", "top_p", "top_k"):
                kwargs.pop(sampling_only, None)
        kwargs.pop("image_aspect_ratio", None)  # a LLaVA-repo option some tasks set; the processor decides here
        return kwargs

    @torch.no_grad()
    def _run_batch(self, batch: list[Instance]) -> tuple[list[tuple[GenerationResult, dict[str, Any]]], float]:
        """(answer and log record of each request, seconds `generate` took for the batch)."""
        task_kwargs = dict(batch[0].args[2] or {})
        until = task_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        inputs = self._model_inputs([self._messages(request) for request in batch])
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        clock = FirstTokenClock()
        output = self.model.generate(
            **inputs,
            **self._generate_kwargs(task_kwargs),
            **self.prune_kwargs,
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=clock,
            return_dict_in_generate=True,
        )
        seconds = time.perf_counter() - clock.start
        input_ids = inputs["input_ids"]
        new_tokens = output.sequences[:, input_ids.shape[1] :]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        visual = torch.isin(input_ids, self.visual_token_ids)
        keep_mask = output.get("keep_mask")
        keep_mask = keep_mask if keep_mask is not None else torch.ones_like(visual)
        attended = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones_like(visual)
        eos = self.model.generation_config.eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=new_tokens.device)
        results = []
        for row, (request, text) in enumerate(zip(batch, texts, strict=True)):
            generated = new_tokens[row]
            produced = int((~torch.isin(generated, eos) & (generated != self.tokenizer.pad_token_id)).sum())
            record = {
                "task": request.args[4],
                "doc_id": request.args[3],
                "visual_tokens": int(visual[row].sum()),
                "kept_visual_tokens": int((keep_mask[row] & visual[row]).sum()),
                "time_to_first_token_s": clock.seconds,
                "batch_size": len(batch),
            }
            prompt_tokens = int((keep_mask[row] & attended[row]).sum())  # what the language model read
            counts = TokenCounts(input_tokens=prompt_tokens, output_tokens=produced)
            results.append((GenerationResult(text=truncate_at_stop(text, until), token_counts=counts), record))
        return results, seconds

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answers in request order; requests with the same generation kwargs share batches of `batch_size`."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[2], sort_keys=True, default=str), []).append(index)
        answers: list[GenerationResult | None] = [None] * len(requests)
        records: list[dict[str, Any]] = []
        seconds = 0.0
        bar = tqdm(total=len(requests), desc="hf_tokenprune", disable=self.rank != 0)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                results, batch_seconds = self._run_batch([requests[i] for i in chunk])
                seconds += batch_seconds
                for index, (answer, record) in zip(chunk, results, strict=True):
                    answers[index] = answer
                    records.append(record)
                    logger.info(
                        f"hf_tokenprune {record['task']}#{record['doc_id']}: kept {record['kept_visual_tokens']} of "
                        f"{record['visual_tokens']} visual tokens, time to first token "
                        f"{record['time_to_first_token_s'] * 1000:.1f} ms"
                    )
                bar.update(len(chunk))
        bar.close()
        self._log(records, answers, seconds)
        return answers

    def _log(self, records: list[dict[str, Any]], answers: list[GenerationResult], seconds: float) -> None:
        """Append the per-request records to `request_log`; the run's totals and means to lmms-eval's metrics."""
        if self.request_log is not None and records:
            with self.request_log.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(record) + "\n" for record in records)
        if not records:
            return
        count = len(records)
        generated = sum(answer.token_counts.output_tokens for answer in answers)
        log_metrics(
            total_gen_tokens=generated,
            total_elapsed_time=seconds,
            avg_speed=generated / seconds if seconds > 0 else 0.0,
            additional_metrics={
                "kept_visual_tokens": sum(record["kept_visual_tokens"] for record in records) / count,
                "visual_tokens": sum(record["visual_tokens"] for record in records) / count,
                "time_to_first_token_s": sum(record["time_to_first_token_s"] for record in records) / count,
            },
        )


__all__ = ["FirstTokenClock", "HFTokenPrune", "truncate_at_stop"]
