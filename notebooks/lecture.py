# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The lecture, seen: sampling, characters vs words, vanishing and exploding gradients
#
# Open this after `dvc repro` (it reads the trained model in `data/train/model`) and run it top to bottom.
# It trains a few small comparison runs of its own (the pipeline's stages, a short budget each, a few
# minutes in all; they land in `data/lecture/` and in MLflow under the experiment `lecture`, and a second
# run of the notebook reuses them). `RNNLAB_NOTEBOOK_QUICK=1` makes every run seconds long;
# `RNNLAB_WORKSPACE` points at another workspace. The code behind each cell is `rnnlab.lecture`; every
# figure is drawn by `rnnlab.plots`.

# %%
import pandas as pd
from IPython.display import Image, display

from rnnlab import lecture, plots

lec = lecture.open_workspace()
pd.set_option("display.max_colwidth", 200)
print(f"workspace {lec.root}; quick mode: {lec.quick}")
print("each comparison run:", lecture.QUICK_BUDGET if lec.quick else lecture.BUDGET,
      "| agreement runs:", lecture.QUICK_AGREEMENT if lec.quick else lecture.AGREEMENT)

# %% [markdown]
# ## 1. The trained model
# Loaded with its vocabulary; loading refuses a model trained with another vocabulary (the hash in
# `meta.json` must match `vocab.json`'s).

# %%
vocab, model, meta = lec.load()
print(f"{vocab.level}-level vocabulary: {len(vocab)} tokens, hash {vocab.hash} (the model's: {meta['vocab_hash']})")
print(f"model: {meta['model']['cell']}, {meta['model']['num_layers']} x {meta['model']['hidden_size']} units")

# %% [markdown]
# ## 2. Sampling novel sequences, step by step
# Start from the zero state a⟨0⟩ with the start input x⟨1⟩; at each step the softmax ŷ⟨t⟩ gives a
# distribution over the next token; draw one, feed it back as x⟨t+1⟩, carry the hidden state, stop at
# `<eos>` or after `max_length` tokens. The sample stage draws the first sample of `data/samples/samples.txt`
# this way (`sampling_steps.png`): each row is one step; the shaded cells are the most likely candidates.

# %%
display(Image(filename=lec.picture()))

# %% [markdown]
# The same procedure from a prime of our own (the prime is run through the model first to set the state):

# %%
prime = "ROMEO:" if all(c in vocab.index for c in "ROMEO:") else ""
samples, trace = lecture.trace(model, vocab, lec.sample_spec(prime=prime, num_samples=1, max_length=200))
display(Image(filename=lecture.draw_steps(trace, vocab, lec.figure("steps_prime.png"), "From a prime")))
print(samples[0].text)

# %% [markdown]
# ## 3. Temperature
# The logits are divided by the temperature T before the softmax: T < 1 sharpens the distribution
# (safer, more repetitive text), T > 1 flattens it (more surprising, more mistakes). The entropy of the
# distribution drawn from, per step, shows it.

# %%
curves = []
for temperature in (0.5, 1.0, 1.5):
    spec = lec.sample_spec(prime=prime, temperature=temperature, num_samples=1, max_length=60)
    samples, trace = lecture.trace(model, vocab, spec, steps=60)
    curves.append((f"T = {temperature}", [step.entropy for step in trace.steps]))
    print(f"T = {temperature}: {samples[0].text!r}\n")
plots.entropy_steps(curves, lec.figure("entropy.png"), "Entropy of the softmax at each step")
display(Image(filename=lec.figure("entropy.png")))

# %% [markdown]
# ## 4. Greedy vs sampled
# Taking the argmax at each step gives one text, the same every time, and it tends to loop; sampling
# gives a different text per seed.

# %%
greedy = lecture.trace(model, vocab, lec.sample_spec(prime=prime, greedy=True, max_length=120))[0][0]
sampled = lecture.trace(model, vocab, lec.sample_spec(prime=prime, num_samples=2, max_length=120))[0]
print("greedy:   ", repr(greedy.text))
for s in sampled:
    print("sampled:  ", repr(s.text))

# %% [markdown]
# ## 5. Character-level vs word-level models
# The same text, the same network and budget, once over characters and once over words. Their losses
# per token cannot be compared (a word carries more than a character), so both are scored in **bits per
# character**: bits per token divided by the characters per token. (Two short runs; a budget of a few
# hundred steps favours neither.)

# %%
char = lec.variant("char", vocab={"level": "char", "min_freq": 1, "max_size": None})
word = lec.variant("word", vocab={"level": "word", "tokenizer": "words", "min_freq": 2, "max_size": 2000})
bpc = {f"{run.name} ({run.train['step']} steps)": run.train["val_bpc"] for run in (char, word)}
plots.bars(bpc, lec.figure("bpc.png"), "validation bits per character", "Character vs word level")
display(Image(filename=lec.figure("bpc.png")))
pd.DataFrame({"character level": char.samples[:3], "word level": word.samples[:3]})

# %% [markdown]
# ## 6. `<unk>` on a word-level model
# A word vocabulary maps rare words to `<unk>`, and the model learns to predict it. The lecture's fix
# when sampling: if `<unk>` is drawn, draw again without it. Here: how often that happens, and the
# steps of one sample with each rejection marked (✗).

# %%
wvocab, wmodel, _ = word.load()
rejected = lecture.trace(wmodel, wvocab, lec.sample_spec(unk="reject", num_samples=20, max_length=60))[0]
allowed = lecture.trace(wmodel, wvocab, lec.sample_spec(unk="allow", num_samples=20, max_length=60))[0]
unk_share = sum(s.text.split().count("<unk>") for s in allowed) / max(sum(s.length for s in allowed), 1)
print(f"<unk> rejection rate (unk: reject): {lecture.rejection_rate(rejected):.1%} of the draws")
print(f"<unk> in the text when allowed: {unk_share:.1%} of the tokens")
one, wtrace = lecture.trace_with_rejection(wmodel, wvocab, lec.sample_spec(unk="reject", max_length=60))
display(Image(filename=lecture.draw_steps(wtrace, wvocab, lec.figure("steps_word.png"), "Word level, <unk> rejected")))
print(one[0].text)

# %% [markdown]
# ## 7. Exploding gradients, tamed by clipping
# A vanilla RNN multiplies the gradient by W_hh at every step back in time: it can grow without bound,
# and one large step throws the weights far away. Clipping rescales the whole gradient to norm at most
# `trainer.gradient_clip_val` before each update. Two runs of a vanilla RNN trained with plain SGD at a
# large learning rate (the `clipping` preset's optimiser), without and with clipping.

# %%
sgd = {"algorithm": "sgd", "lr": 1.0, "schedule": "none"}
runs = [lec.variant(f"rnn-clip-{clip}", model={"cell": "rnn"}, optim=sgd, trainer={"gradient_clip_val": clip},
                    gradstats={"every_n_steps": 5}) for clip in (0.0, 0.25)]
plots.clipping([(f"clip {run.params.trainer.gradient_clip_val or 'off'}", run.grad_norm_rows(), run.loss_rows())
                for run in runs], lec.figure("clipping.png"), "Vanilla RNN, SGD lr 1.0: without and with clipping")
display(Image(filename=lec.figure("clipping.png")))
for run in runs:
    print(f"clip {run.params.trainer.gradient_clip_val or 'off'}: clipped in {run.train['clip_fraction']:.0%} "
          f"of the steps; validation loss {run.train['val_loss']:.3f} nats/token")
clipped = runs[1]

# %% [markdown]
# ## 8. Vanishing gradients, and the GRU
# The gradient of the last step's loss with respect to each earlier input, ‖∂L_T/∂x_t‖, against the
# distance T − t: a vanilla RNN's falls by orders of magnitude within a few steps, so it cannot learn
# long-range dependencies; the GRU's update gate keeps an additive path and its curve stays up.

# %%
curves = [(f"vanilla RNN ({clipped.name})", *clipped.gtt()),
          (f"{char.params.model.cell.upper()} ({char.name})", *char.gtt())]
plots.runs_gradient_through_time(curves, lec.figure("gtt.png"))
display(Image(filename=lec.figure("gtt.png")))

# %% [markdown]
# What it costs: "the cat , which ... , was full ." / "the cats ... were full .": the verb's number
# depends on a subject N words back. Per distance N, how often does the model prefer the right form?
# (50 % is chance. Word-level models of the agreement corpus, the `vanishing` preset, shortened.)

# %%
rnn, gru = lec.agreement_run("rnn"), lec.agreement_run("gru")
plots.agreement({"vanilla RNN": rnn.agreement(), "GRU": gru.agreement()}, lec.figure("agreement.png"))
display(Image(filename=lec.figure("agreement.png")))
plots.runs_gradient_through_time([("vanilla RNN", *rnn.gtt()), ("GRU", *gru.gtt())], lec.figure("gtt_agreement.png"))
display(Image(filename=lec.figure("gtt_agreement.png")))
