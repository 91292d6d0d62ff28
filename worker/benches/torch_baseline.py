#!/usr/bin/env python3
"""The PyTorch/diffusers side of `cargo bench -p sdfarm-worker --bench engine`.

Runs the same two workloads as the Rust benchmark on the CPU with the same thread count:
one SD 1.5 UNet evaluation (random weights, 32x32 latent, batch 2, 77-token context) and
the tiny reference pipeline end to end (64x64, Euler, 10 steps, CFG 7.5). Prints
`unet_step_s <seconds>` and `tiny_pipeline_s <seconds>`, which the Rust benchmark reads.

When torch or diffusers is not installed it prints a skip message and exits 0.

    python3 worker/benches/torch_baseline.py [--tiny DIR] [--steps N] [--threads N]
"""

import argparse
import os
import statistics
import sys
import time


def sd15_unet_config():
    # runwayml/stable-diffusion-v1-5 unet/config.json
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        cross_attention_dim=768,
        attention_head_dim=8,
    )


def main():
    parser = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument(
        "--tiny",
        default=os.path.join(here, "../../../shared/reference/tiny-sd/diffusers"),
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    try:
        import torch
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    except ImportError as e:
        print(f"torch_baseline: skipped: {e.name or e} is not installed")
        return 0

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with torch.inference_mode():
        unet = UNet2DConditionModel(**sd15_unet_config()).eval()
        latents = torch.randn(2, 4, 32, 32)
        context = torch.randn(2, 77, 768)
        t = torch.tensor(999)
        unet(latents, t, encoder_hidden_states=context)
        times = []
        for _ in range(max(1, args.steps)):
            start = time.perf_counter()
            unet(latents, t, encoder_hidden_states=context)
            times.append(time.perf_counter() - start)
        del unet
        print(f"unet_step_s {statistics.median(times):.4f}")

        pipe = StableDiffusionPipeline.from_pretrained(args.tiny, safety_checker=None)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)

        def render():
            start = time.perf_counter()
            pipe(
                "a photo of a cat",
                negative_prompt="",
                height=64,
                width=64,
                num_inference_steps=10,
                guidance_scale=7.5,
                output_type="np",
            )
            return time.perf_counter() - start

        render()
        print(f"tiny_pipeline_s {statistics.median([render(), render()]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
