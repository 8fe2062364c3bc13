"""The glimpse figure shows what the network saw, where it saw it (the paper's Figure 3)."""

import torch
import torch.nn.functional as F

from ram_wsi.retina import RetinaSpec, glimpse
from ram_wsi.viz import composite_glimpse


def test_composite_glimpse_puts_every_scale_at_its_true_extent():
    """On a smooth image, the composite of a glimpse is the image around the glimpse's centre,
    resized: the fovea sharp in the middle, the coarser scales around it. A scale placed,
    sized or ordered wrongly leaves a large error; the crop itself leaves a small one."""
    spec = RetinaSpec(patch=8, scales=3, scale_factor=2.0)
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    img = (torch.sin(xx / 9.0) * torch.cos(yy / 7.0) * 0.5 + 0.5)[None, None]
    g = glimpse(img, torch.zeros(1, 2), spec)[0]  # (k, C, g, g) at the image's centre
    side = 96
    sq = composite_glimpse(g, spec.scale_factor, side)
    widest = int(spec.window(spec.scales - 1))  # 32 px of the image
    crop = img[0, :, 48 - widest // 2:48 + widest // 2, 48 - widest // 2:48 + widest // 2]
    want = F.interpolate(crop[None], size=(side, side), mode="nearest")[0]
    err = (sq - want).abs().mean().item()
    assert err < 0.05
    fovea = side * spec.window(0) / widest  # the middle quarter is the full-resolution patch
    a = int((side - fovea) / 2)
    middle = F.interpolate(g[0][None], size=(int(fovea), int(fovea)), mode="nearest")[0]
    assert torch.equal(sq[:, a:a + int(fovea), a:a + int(fovea)], middle)
    # a composite with the scales swapped is far from the image
    bad = composite_glimpse(g.flip(0), spec.scale_factor, side)
    assert (bad - want).abs().mean().item() > 3 * err
