"""Size a preset before training it: parameters, FLOPs per token, ZeRO-3 memory per GPU.

The model is instantiated on the meta device (no memory), so this works for the 7b preset on a
laptop. The vocabulary is planned from the config: the text tokenizer's size (`text.vocab_size`,
or the real hub tokenizer if it is in the local cache) and the visual tokenizer's codebook.
"""

from __future__ import annotations

from arm.config import ArmConfig
from arm.model.build import count_parameters, flops_per_token, largest_layer_params, meta_model
from arm.text.vocab import VocabLayout


def planned_layout(cfg: ArmConfig) -> VocabLayout:
    if cfg.pretrain.images == "oracle":
        from arm.train.perfect import PerfectTokenizer

        v = PerfectTokenizer(cfg.world)
        codebook, grid, levels = v.codebook_size, v.grid, v.levels
    else:
        t = cfg.tokenizer
        codebook, grid, levels = t.codebook_size, tuple(t.grid), tuple(t.levels)
    n_text = cfg.text.vocab_size
    if cfg.text.tokenizer != "bpe":
        try:
            from arm.text.tokenizer import hub_text_tokenizer

            n_text = hub_text_tokenizer(cfg.text.tokenizer).get_vocab_size(with_added_tokens=True)
        except FileNotFoundError:
            pass  # offline without the hub files: plan with the configured size
    return VocabLayout(n_text=n_text, codebook_size=codebook, grid=grid, levels=levels)


def zero3_memory(total_params: int, largest_layer: int, gpus_per_node: int, nodes: int) -> list[dict]:
    """DeepSpeed's estimate of model-state memory (params, grads, Adam states) per GPU and per CPU."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    rows = []
    for offload_optimizer in (False, True):
        for offload_params in ((False,) if not offload_optimizer else (False, True)):
            for zero_init in (True, False):
                cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                    total_params=total_params, largest_layer_params=largest_layer,
                    num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=offload_optimizer,
                    cpu_offload_params=offload_params, zero_init=zero_init,
                )
                rows.append({"offload_optimizer": offload_optimizer, "offload_params": offload_params,
                             "zero_init": zero_init, "gpu_gib": gpu / 2**30, "cpu_gib": cpu / 2**30})
    return rows


def plan(cfg: ArmConfig, gpus_per_node: int = 8, nodes: int = 1) -> dict:
    layout = planned_layout(cfg)
    model = meta_model(cfg.model, layout)
    n = count_parameters(model)
    flops = flops_per_token(cfg.model, layout, cfg.text.seq_len)
    largest = largest_layer_params(model)
    p = cfg.pretrain
    global_batch_tokens = p.micro_batch * p.grad_accum * gpus_per_node * nodes * cfg.text.seq_len
    return {
        "preset": cfg.preset,
        "arch": cfg.model.arch,
        "parameters": n,
        "largest_layer_parameters": largest,
        "vocab": {"text": layout.n_text, "image_codes": layout.codebook_size, "total": layout.vocab_size,
                  "tokens_per_image": layout.tokens_per_image},
        "seq_len": cfg.text.seq_len,
        **flops.as_dict(),
        "global_batch_tokens": global_batch_tokens,
        "flops_per_step": flops.per_token * global_batch_tokens,
        "gpus_per_node": gpus_per_node,
        "nodes": nodes,
        "zero3_model_states": zero3_memory(n, largest, gpus_per_node, nodes),
    }
