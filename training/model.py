"""The fused pose model, in one file: four encoders, a fusion module and a pose head.

    rgb [B,R,17,2] ──TCN──────────────┐
    lidar [B,Cl,3] + mask ──PointTf───┤  feats: modality -> [B, D]
    mmwave [B,Cm,5] + mask ──PointTf──┤  × presence [B,4]  (absent = zero features, no parameters)
    wifi [B,3,114,20] ──CNN+SE────────┘
                                      └─ fusion (concat | mlp | attention) ─ head ─> pose [B,17,3] m

The presence mask is also a Shapley coalition: ``fuse_coalitions`` runs the fusion head over C
masks at once on the features of one encoder pass. Everything is static-shaped (no Python
control flow on tensor values, masks are bool tensors) so ``torch.onnx.export`` can trace it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sensors.core import schema
from training.config import ModelConfig

MASK_FILL = -1e4  # attention logit of a masked neighbour: exp() underflows to exactly 0 in float32
FAR = 1e6  # distance added to padded points so a real point never picks them as neighbours


# ----------------------------------------------------------------------------------------------
# RGB: VideoPose3D-style dilated temporal convolutions over the causal keypoint window
# ----------------------------------------------------------------------------------------------
def tcn_kernels(window: int) -> tuple[int, ...]:
    """Kernel widths of the temporal layers for a window of ``window`` frames: its prime factors,
    threes first (9 -> (3, 3), 27 -> (3, 3, 3), 10 -> (2, 5), 1 -> ()). Layer i is dilated by the
    product of the widths before it, so the receptive field is the product of all widths = the
    window: the last output sees every frame of the window exactly through every tap."""
    n, out = int(window), []
    for f in (3, 2):
        while n % f == 0 and n > 1:
            out.append(f)
            n //= f
    f = 5
    while n > 1:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 2
    return tuple(sorted(out, key=lambda k: (k != 3, k)))


class TemporalBlock(nn.Module):
    """VideoPose3D residual block without padding: conv (k, dilation d) then 1x1 conv.
    x [B, D, T] -> [B, D, T - (k-1) d]; the residual is the input's last T - (k-1) d frames."""

    def __init__(self, dim: int, kernel: int, dilation: int):
        super().__init__()
        self.cut = (kernel - 1) * dilation
        self.conv = nn.Conv1d(dim, dim, kernel, dilation=dilation)
        self.mix = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv(x))
        return x[:, :, self.cut:] + F.gelu(self.mix(y))


class TemporalConvEncoder(nn.Module):
    """rgb [B, R, 17, 2] normalised keypoints -> [B, D] (the feature of the last frame = now).

    Layers follow the window (``tcn_kernels``): an expanding conv of the first width, then one
    residual block per further width, dilated by the product of the widths before it. No padding:
    the receptive field (``receptive_field``) is exactly R frames and every tap of every layer
    reads real frames (as VideoPose3D, whose 27-frame model is widths 3, 3, 3, dilations 1, 3, 9).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kernels = tcn_kernels(cfg.rgb_window)
        self.kernels = kernels
        self.receptive_field = 1
        for k in kernels:
            self.receptive_field *= k
        first = kernels[0] if kernels else 1
        self.expand = nn.Conv1d(schema.N_KEYPOINTS * 2, cfg.dim, first)
        blocks, dilation = [], first
        for k in kernels[1:]:
            blocks.append(TemporalBlock(cfg.dim, k, dilation))
            dilation *= k
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        b, r = rgb.shape[0], rgb.shape[1]
        x = rgb.reshape(b, r, -1).transpose(1, 2)[:, :, r - self.receptive_field:]  # [B, 34, RF]
        x = F.gelu(self.expand(x))  # [B, D, RF - k0 + 1]
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, :, -1])  # [B, D]; x has exactly one frame left here


# ----------------------------------------------------------------------------------------------
# LiDAR / mmWave: point-transformer style encoder over padded, masked point sets
# ----------------------------------------------------------------------------------------------
def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class PointTransformerLayer(nn.Module):
    """Vector self-attention over the k nearest real neighbours of each point.

    h [B, N, D], xyz [B, N, 3], mask [B, N] bool -> [B, N, D]. Padded points are never chosen
    as neighbours of a real point while it has enough real ones, and a padded neighbour's weight
    is exactly 0, so padding cannot change a real point's output.
    """

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.k = k
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.pos = mlp([3, dim, dim])
        self.attn = mlp([dim, dim, dim])
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), mlp([dim, 2 * dim, dim]))

    def forward(self, h: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        dist = torch.cdist(xyz, xyz)  # [B, N, N]
        dist = dist + (~mask).unsqueeze(1).to(dist.dtype) * FAR
        idx = dist.topk(self.k, dim=-1, largest=False).indices  # [B, N, k]
        flat = idx + (torch.arange(b, device=h.device) * n).view(b, 1, 1)  # index into B*N rows
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)  # [B, N, D] each
        k_nb = k.reshape(b * n, d)[flat]  # [B, N, k, D]
        v_nb = v.reshape(b * n, d)[flat]
        rel = xyz.unsqueeze(2) - xyz.reshape(b * n, 3)[flat]  # [B, N, k, 3]
        pos = self.pos(rel)  # [B, N, k, D]
        logits = self.attn(q.unsqueeze(2) - k_nb + pos)  # [B, N, k, D]
        nb_mask = mask.reshape(b * n)[flat].unsqueeze(-1)  # [B, N, k, 1]
        w = torch.softmax(logits.masked_fill(~nb_mask, MASK_FILL), dim=2)
        h = h + self.proj((w * (v_nb + pos)).sum(dim=2))  # [B, N, D]
        h = h + self.ffn(h)
        return h * mask.unsqueeze(-1).to(h.dtype)


class PointEncoder(nn.Module):
    """points [B, N, C] + mask [B, N] bool -> [B, D]. An empty cloud gives a finite feature."""

    def __init__(self, columns: int, cap: int, cfg: ModelConfig, scale: list[float]):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        self.embed = mlp([columns, cfg.dim, cfg.dim])
        k = min(cfg.knn, cap)
        self.layers = nn.ModuleList([PointTransformerLayer(cfg.dim, k) for _ in range(cfg.point_layers)])
        self.out = nn.Sequential(mlp([2 * cfg.dim + 4, cfg.dim, cfg.dim]), nn.LayerNorm(cfg.dim))

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(points.dtype)  # [B, N, 1]
        x = points * self.scale * m  # padded rows -> 0 whatever they held
        count = m.sum(dim=1)  # [B, 1]
        centroid = x[..., :3].sum(dim=1) / count.clamp(min=1.0)  # [B, 3] metres
        xyz = (x[..., :3] - centroid.unsqueeze(1)) * m  # [B, N, 3] centred
        h = self.embed(torch.cat([xyz, x[..., 3:]], dim=-1)) * m  # [B, N, D]
        for layer in self.layers:
            h = layer(h, xyz, mask)
        any_point = (count > 0).to(h.dtype)  # [B, 1]
        h_max = (h + (m - 1.0) * -MASK_FILL).max(dim=1).values * any_point  # [B, D]
        h_mean = h.sum(dim=1) / count.clamp(min=1.0)  # [B, D]
        n_feat = torch.log1p(count)  # [B, 1] how many points were seen
        return self.out(torch.cat([h_max, h_mean, centroid, n_feat], dim=-1))


# ----------------------------------------------------------------------------------------------
# WiFi: MetaFi++-style CNN with channel attention over CSI [3, 114, 20]
# ----------------------------------------------------------------------------------------------
class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: x [B, C, H, W] -> x scaled per channel."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc = mlp([channels, max(channels // reduction, 4), channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean(dim=(2, 3)))).unsqueeze(-1).unsqueeze(-1)


class CsiEncoder(nn.Module):
    """wifi [B, 3, 114, 20] -> [B, D]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.wifi_channels
        self.convs = nn.Sequential(
            nn.Conv2d(schema.WIFI_ANTENNAS, c, 3, stride=(2, 1), padding=1), nn.GELU(), ChannelAttention(c),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU(), ChannelAttention(2 * c),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.GELU(), ChannelAttention(2 * c),
        )  # [B, 2c, 15, 5]
        self.out = nn.Sequential(nn.Linear(2 * c, cfg.dim), nn.LayerNorm(cfg.dim))

    def forward(self, wifi: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(wifi).mean(dim=(2, 3)))


# ----------------------------------------------------------------------------------------------
# Fusion and head
# ----------------------------------------------------------------------------------------------
class TokenAttention(nn.Module):
    """Pre-norm self-attention block across the 4 modality tokens. x [B, 4, D] -> [B, 4, D]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), mlp([dim, 2 * dim, dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, 4, D/H] each
        w = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)  # [B, H, 4, 4]
        x = x + self.proj((w @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.ffn(x)


class Fusion(nn.Module):
    """tokens [B, 4, D] (absent modalities already zero) -> [B, out_dim]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.fusion
        n, d = schema.N_MODALITIES, cfg.dim
        if cfg.fusion == "concat":
            self.out_dim = n * d
        elif cfg.fusion == "mlp":
            self.net = nn.Sequential(mlp([n * d, cfg.hidden, cfg.hidden]), nn.GELU())
            self.out_dim = cfg.hidden
        else:  # attention
            self.embed = nn.Parameter(torch.zeros(n, d))  # which modality a token is
            nn.init.normal_(self.embed, std=0.02)
            self.blocks = nn.ModuleList([TokenAttention(d, cfg.heads) for _ in range(cfg.fusion_layers)])
            self.out_dim = n * d

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "concat":
            return tokens.flatten(1)
        if self.kind == "mlp":
            return self.net(tokens.flatten(1))
        x = tokens + self.embed
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


# Point columns brought to ~unit scale before the encoder: SNR in dB; metres and m/s stay as they are.
COLUMN_SCALE: dict[str, float] = {"snr_db": 0.05}


def encoder(spec: schema.ModalitySpec, cfg: ModelConfig) -> nn.Module:
    """The encoder of a modality, by its kind: keypoints -> TCN over the window, points -> point
    transformer over the cap (``cfg.<name>_cap``), CSI -> CNN."""
    if spec.kind == schema.KEYPOINTS:
        return TemporalConvEncoder(cfg)
    if spec.kind == schema.POINTS:
        return PointEncoder(len(spec.columns), getattr(cfg, spec.size_key), cfg,
                            [COLUMN_SCALE.get(c, 1.0) for c in spec.columns])
    return CsiEncoder(cfg)


class PoseModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.dim
        self.encoders = nn.ModuleDict({m: encoder(schema.MODALITY_SPECS[m], cfg) for m in cfg.modalities})
        self.fusion = Fusion(cfg)
        self.head = mlp([self.fusion.out_dim, cfg.hidden, schema.N_JOINTS * 3])
        # Prior the head predicts an offset from (set from the training set's mean pose).
        self.register_buffer("mean_pose", torch.zeros(schema.N_JOINTS, 3))
        # Enabled-modality mask: disabled modalities are always absent.
        self.register_buffer("enabled", torch.tensor(
            [1.0 if m in cfg.modalities else 0.0 for m in schema.MODALITIES]))

    def set_mean_pose(self, joints_mean: torch.Tensor) -> None:
        """joints_mean [17, 3] metres (mean training pose)."""
        self.mean_pose.copy_(torch.as_tensor(joints_mean, dtype=torch.float32).reshape(schema.N_JOINTS, 3))

    def encode(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The modalities' inputs in ``schema.MODEL_INPUTS`` order (without presence) -> dict
        modality -> [B, D]. A disabled modality gets zeros."""
        named = dict(zip(schema.MODEL_INPUTS, inputs))
        first = inputs[0]
        return {m: self.encoders[m](*(named[k] for k in schema.MODALITY_INPUTS[m])) if m in self.encoders
                else first.new_zeros(first.shape[0], self.dim) for m in schema.MODALITIES}

    def _head(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, 4, D] -> pose [N, 17, 3] metres."""
        offset = self.head(self.fusion(tokens)).reshape(-1, schema.N_JOINTS, 3)
        return self.mean_pose + offset

    def fuse(self, feats: dict[str, torch.Tensor], presence: torch.Tensor) -> torch.Tensor:
        """feats: modality -> [B, D]; presence float [B, 4] -> pose [B, 17, 3] metres."""
        tokens = torch.stack([feats[m] for m in schema.MODALITIES], dim=1)  # [B, 4, D]
        return self._head(tokens * (presence * self.enabled).unsqueeze(-1))

    def fuse_coalitions(self, feats: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """masks float [C, 4] or [B, C, 4] -> poses [B, C, 17, 3]: one fusion per coalition."""
        tokens = torch.stack([feats[m] for m in schema.MODALITIES], dim=1)  # [B, 4, D]
        b = tokens.shape[0]
        masks = (masks * self.enabled).expand(b, -1, -1) if masks.dim() == 2 else masks * self.enabled
        c = masks.shape[1]
        if self.fusion.kind == "concat":
            # The head's first layer is linear in the concatenated tokens: project each modality
            # once, then mix the C coalitions (same result, ~4x cheaper than C full head passes).
            first = self.head[0]
            w = first.weight.reshape(first.out_features, schema.N_MODALITIES, self.dim)  # [H, 4, D]
            parts = torch.einsum("bmd,hmd->bmh", tokens, w)  # [B, 4, H]
            pre = torch.einsum("bcm,bmh->bch", masks, parts) + first.bias  # [B, C, H]
            offset = self.head[1:](pre).reshape(b, c, schema.N_JOINTS, 3)
            return self.mean_pose + offset
        x = tokens.unsqueeze(1) * masks.unsqueeze(-1)  # [B, C, 4, D]
        return self._head(x.reshape(b * c, schema.N_MODALITIES, self.dim)).reshape(b, c, schema.N_JOINTS, 3)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``schema.MODEL_INPUTS`` (the modalities' inputs, then presence [B, 4]) -> pose [B, 17, 3] m."""
        *tensors, presence = inputs
        return self.fuse(self.encode(*tensors), presence)

    def encoder_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """modality -> its encoder's named parameters (the parameters AWC constrains)."""
        return {m: list(enc.named_parameters()) for m, enc in self.encoders.items()}


def build_model(cfg: ModelConfig) -> PoseModel:
    cfg.validate()
    return PoseModel(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
