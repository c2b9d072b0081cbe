"""Training passes replayed from CUDA graphs.

On a GPU, a training minibatch of an ODE model is bound by kernel launches,
not by arithmetic: every solver step launches dozens of small kernels, in the
forward pass and again in the backward pass, and a minibatch of 36 series x
200 samples costs about what 36 x 2,000 costs (``benchmarks/README.md``). A
CUDA graph records those launches once and replays them as one.

:class:`CapturedTrainingPass` captures the whole pass of one minibatch
shape (encoder, global and individual draws, the solve, the likelihood, the
bound and its backward) and replays it for every later minibatch of that
shape: the minibatch is copied into the graph's input buffers, the gradients
are zeroed and accumulated in place inside the graph (so every captured shape
writes the same ``.grad`` tensors), and the loss, the per-series bounds, the
log weights and the count of zeroed samples are read from its output buffers.
The optimiser step, the checks for non-finite values and the rollbacks stay
eager, outside the graph.

What a graph needs from the pass, and how the package provides it:

* no host synchronisation: the pass never reads a device value on the host
  (group codes are checked on the host, constants live on the device, the
  count of zeroed samples stays a tensor);
* fixed shapes and fixed Python-level decisions: a graph is captured per
  minibatch shape and per value of the host-side switches (grid prepended,
  step plan, unseen levels); the last, shorter minibatch gets its own;
* random numbers from a generator registered with the graph: its seed can be
  reset between epochs, and each replay continues its stream, so a replayed
  epoch draws the numbers the eager one would (the warm-up and capture draw
  nothing from the training's stream).

A model whose right-hand side reads values on the host (a Python ``if`` on a
tensor, ``.item()``) cannot be captured; the estimator then warns once and
trains eagerly.
"""

import torch

__all__ = ["CapturedTrainingPass", "graphs_supported"]


def graphs_supported(device):
    """Whether training on ``device`` can use CUDA graphs in this PyTorch."""
    device = torch.device(device)
    return (device.type == "cuda" and torch.cuda.is_available()
            and hasattr(torch.cuda.CUDAGraph, "register_generator_state"))


def batch_signature(batch):
    """What must match for a captured pass to replay ``batch``: shapes and switches."""
    tensors = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items())
                    if torch.is_tensor(v))
    switches = tuple((k, repr(v)) for k, v in sorted(batch.items()) if not torch.is_tensor(v))
    return tensors, switches


class CapturedTrainingPass:
    """One minibatch shape's training pass (loss and backward), captured.

    Parameters
    ----------
    vae : HierarchicalVAE
        The network; its parameters must all have ``.grad`` tensors (zeros
        are fine) before the first capture, and keep them.
    batch : dict
        A minibatch of the shape to capture (from ``SeriesData.batch``).
    n_total : int
        Number of training series (scales the global KL).
    K : int
        Importance samples per series.
    generator : torch.Generator
        CUDA generator of the draws; registered with the graph.
    estimator : {"iwae", "dreg"}
    warmup : int, default=2
        Eager passes on a side stream before the capture (as CUDA requires).
    refine : int, default=0
        Gauss-Newton refinement of the proposals (``training_loss``'s ``refine``).
    """

    def __init__(self, vae, batch, n_total, K, generator, estimator, warmup=2, refine=0):
        self.signature = (batch_signature(batch), n_total, K, estimator, refine)
        self.params = [p for p in vae.parameters() if p.requires_grad]
        self.grads = [p.grad for p in self.params]  # the graph writes into these
        self.inputs = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
        static = {**batch, **self.inputs}

        def run():
            for p in self.params:
                p.grad.zero_()
            loss, per_series, out = vae.training_loss(static, n_total, K, generator, estimator,
                                                      refine=refine)
            loss.backward()
            return loss.detach(), per_series.detach(), out["log_w"].detach(), out["n_bad"]

        # the warm-up draws are not the training's: the stream resumes where it was
        state = generator.get_state()
        side = torch.cuda.Stream(device=generator.device)
        side.wait_stream(torch.cuda.current_stream(generator.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream(generator.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self.outputs = run()
        generator.set_state(state)

    def matches(self, batch, n_total, K, estimator, refine=0):
        """Whether ``batch`` has the captured shape and switches, and the settings match."""
        return (batch_signature(batch), n_total, K, estimator, refine) == self.signature

    def __call__(self, batch):
        """Replay for ``batch``: ``(loss, per_series, log_w, n_bad)`` in the graph's buffers.

        The gradients of the network's parameters hold this minibatch's
        gradient afterwards. The outputs are overwritten by the next replay.
        """
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:  # set to None or replaced since: give the graph's back
                p.grad = g
        for k, v in self.inputs.items():
            v.copy_(batch[k], non_blocking=True)
        self.graph.replay()
        return self.outputs
