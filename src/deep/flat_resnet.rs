//! A small CIFAR-style ResNet written in burn, evaluated in `f64` on burn's Flex CPU backend, as
//! an [`Objective`] and a [`FiniteSum`] over a flat parameter vector: backward-error analysis
//! ([`crate::bea`]) on a convolutional network with BatchNorm, run by the unchanged harness.
//!
//! The architecture is [`super::resnet::ResNet`]'s in miniature: a 3x3 stem convolution, stages
//! of basic blocks (two 3x3 convolutions; the first block of every stage after the first halves
//! the resolution and projects its shortcut with a 1x1 convolution), BatchNorm after every
//! convolution, global average pooling and a linear head, softmax cross-entropy. The activation
//! is a choice: ReLU (as in the paper) or a smooth one, since the backward-error expansion
//! assumes derivatives of every order.
//!
//! BatchNorm runs in training mode, so its statistics are part of the function. The images are
//! split into [`FlatResNetSpec::batch_norm_groups`] consecutive groups of equal size, each
//! normalised with its own statistics (ghost BatchNorm), and the loss is the mean of the groups'
//! losses:
//! $$L(\theta) = \frac1G \sum_{g=1}^G L_g(\theta),$$
//! which makes the network a finite sum whose "examples" are the groups. With one group this is
//! BatchNorm on the full batch. With $G = m$ groups it is what SGD with $m$ minibatches per
//! epoch sees, minibatch $k$ normalised by its own statistics, and GD on $L$ is the paper's
//! full-batch step (gradients accumulated over blocks, each block normalised by itself): both
//! optimizers then descend one loss, so SGD's modified loss is well defined.
//!
//! Precision and HVP as in [`super::mlp`]: `f64` tensors on Flex, gradients by burn's reverse
//! mode, the HVP by a central difference of two gradients.

use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, log_softmax, relu};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use ndarray::{Array1, ArrayView1};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::Cpu;
use super::mlp::{f64_tensor, forward, reverse_mode, softplus};
use crate::data::cifar::ImageSet;
use crate::objective::{FiniteSum, Objective, central_difference_along};
use crate::{Error, Result};

/// The activation of a [`FlatResNet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResNetActivation {
    /// $\max(x, 0)$: the paper's; its kinks break the smoothness the expansion assumes.
    Relu,
    /// $x\,\Phi(x)$ (erf form).
    Gelu,
    /// $\log(1 + e^x)$.
    Softplus,
}

/// Architecture of a [`FlatResNet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlatResNetSpec {
    /// Channels of the first stage; stage $s$ has `width` $\cdot 2^s$.
    pub width: usize,
    /// Basic blocks per stage.
    pub blocks: Vec<usize>,
    /// The activation.
    pub activation: ResNetActivation,
    /// BatchNorm's groups $G$: the images are split into $G$ consecutive groups of equal size,
    /// each normalised with its own statistics; 1 is BatchNorm on the full batch.
    pub batch_norm_groups: usize,
}

/// BatchNorm's $\epsilon$ (burn's and PyTorch's default).
const BN_EPS: f64 = 1e-5;

/// One parameter tensor's place in the flat vector.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: usize,
    len: usize,
}

/// A convolution followed by BatchNorm: weight `[out, in, k, k]`, then $\gamma$, $\beta$ `[out]`.
#[derive(Debug, Clone, Copy)]
struct ConvBn {
    weight: Slot,
    gamma: Slot,
    beta: Slot,
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
}

#[derive(Debug, Clone, Copy)]
struct Block {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
}

/// A small ResNet in burn over a flat `f64` parameter vector, with its training images.
///
/// # Shapes
/// - images: `[n, channels, side, side]`, scaled to $[-1, 1]$; labels: `n` classes.
#[derive(Debug, Clone)]
pub struct FlatResNet {
    spec: FlatResNetSpec,
    stem: ConvBn,
    blocks: Vec<Block>,
    head_weight: Slot,
    head_bias: Slot,
    head_in: usize,
    classes: usize,
    dim: usize,
    /// `n * channels * side * side` pixels in $[-1, 1]$.
    images: Vec<f64>,
    /// Images per BatchNorm group.
    group_size: usize,
    image_shape: [usize; 3],
    labels: Vec<usize>,
}

impl FlatResNet {
    /// The network of `spec` on `data` (every image), pixels mapped to $[-1, 1]$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a zero width, no stage or an empty stage, no images, or
    /// a number of BatchNorm groups that is zero or does not divide the number of images.
    pub fn new(spec: FlatResNetSpec, data: &ImageSet) -> Result<Self> {
        if spec.width == 0 || spec.blocks.is_empty() || spec.blocks.contains(&0) {
            return Err(Error::invalid("resnet", "width and every stage's block count must be positive"));
        }
        let n = data.labels.len();
        if n == 0 {
            return Err(Error::invalid("data", "no images"));
        }
        let groups = spec.batch_norm_groups;
        if groups == 0 || !n.is_multiple_of(groups) {
            return Err(Error::invalid(
                "batch_norm_groups",
                format!("{groups} groups do not split {n} images into equal groups"),
            ));
        }
        let mut offset = 0;
        let mut slot = |len: usize| {
            let s = Slot { offset, len };
            offset += len;
            s
        };
        let mut conv_bn = |in_ch: usize, out_ch: usize, kernel: usize, stride: usize| ConvBn {
            weight: slot(out_ch * in_ch * kernel * kernel),
            gamma: slot(out_ch),
            beta: slot(out_ch),
            in_ch,
            out_ch,
            kernel,
            stride,
        };
        let stem = conv_bn(data.channels, spec.width, 3, 1);
        let mut blocks = Vec::new();
        let mut ch = spec.width;
        for (s, &count) in spec.blocks.iter().enumerate() {
            let out = spec.width << s;
            for b in 0..count {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let conv1 = conv_bn(ch, out, 3, stride);
                let conv2 = conv_bn(out, out, 3, 1);
                let shortcut = (stride != 1 || ch != out).then(|| conv_bn(ch, out, 1, stride));
                blocks.push(Block { conv1, conv2, shortcut });
                ch = out;
            }
        }
        let classes = data.n_classes;
        let head_weight = slot(classes * ch);
        let head_bias = slot(classes);
        let dim = offset;
        Ok(FlatResNet {
            spec,
            stem,
            blocks,
            head_weight,
            head_bias,
            head_in: ch,
            classes,
            dim,
            images: data.pixels.iter().map(|&p| f64::from(p) / 127.5 - 1.0).collect(),
            group_size: n / groups,
            image_shape: [data.channels, data.height, data.width],
            labels: data.labels.iter().map(|&l| usize::from(l)).collect(),
        })
    }

    /// The architecture.
    pub fn spec(&self) -> &FlatResNetSpec {
        &self.spec
    }

    /// Seeded initial parameters: convolutions $\mathcal N(0, 2/\text{fan-in})$ (He), the head
    /// $\mathcal N(0, 1/\text{fan-in})$, $\gamma = 1$, $\beta = 0$, head bias 0.
    pub fn initial_parameters(&self, seed: u64) -> Array1<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut theta = Array1::zeros(self.dim);
        let mut normal = |theta: &mut Array1<f64>, s: Slot, std: f64| {
            for i in s.offset..s.offset + s.len {
                let z: f64 = StandardNormal.sample(&mut rng);
                theta[i] = z * std;
            }
        };
        let convs = std::iter::once(self.stem)
            .chain(self.blocks.iter().flat_map(|b| [Some(b.conv1), Some(b.conv2), b.shortcut]).flatten());
        for c in convs {
            normal(&mut theta, c.weight, (2.0 / (c.in_ch * c.kernel * c.kernel) as f64).sqrt());
            theta.slice_mut(ndarray::s![c.gamma.offset..c.gamma.offset + c.gamma.len]).fill(1.0);
        }
        normal(&mut theta, self.head_weight, (1.0 / self.head_in as f64).sqrt());
        theta
    }

    /// The mean cross-entropy at `theta` over the images of BatchNorm groups `groups` (with
    /// multiplicity), each group normalised by its own statistics. `observe` sees every
    /// activation's input.
    fn loss_tensor<B: Backend>(
        &self,
        theta: Tensor<B, 1>,
        groups: &[usize],
        mut observe: impl FnMut(&Tensor<B, 4>),
    ) -> Tensor<B, 1> {
        let device = theta.device();
        let [c, h, w] = self.image_shape;
        let per_image = c * h * w;
        let b = self.group_size;
        let n = groups.len() * b;
        let mut pixels = Vec::with_capacity(n * per_image);
        let mut labels = Vec::with_capacity(n);
        for &g in groups {
            assert!(g < self.spec.batch_norm_groups, "BatchNorm group {g} of {}", self.spec.batch_norm_groups);
            pixels.extend_from_slice(&self.images[g * b * per_image..(g + 1) * b * per_image]);
            labels.extend_from_slice(&self.labels[g * b..(g + 1) * b]);
        }
        let x = f64_tensor::<B, 4>(pixels, [n, c, h, w], &device);
        let k = groups.len();
        let mut act = |t: Tensor<B, 4>| {
            observe(&t);
            activate(t, self.spec.activation)
        };
        let mut a = act(self.conv_bn(&theta, x, &self.stem, k));
        for block in &self.blocks {
            let y = act(self.conv_bn(&theta, a.clone(), &block.conv1, k));
            let y = self.conv_bn(&theta, y, &block.conv2, k);
            let shortcut = match &block.shortcut {
                Some(s) => self.conv_bn(&theta, a, s, k),
                None => a,
            };
            a = act(y + shortcut);
        }
        let pooled: Tensor<B, 2> = a.mean_dim(3).mean_dim(2).reshape([n, self.head_in]);
        let weight = take(&theta, self.head_weight).reshape([self.classes, self.head_in]);
        let bias = take(&theta, self.head_bias).reshape([1, self.classes]);
        let logits = pooled.matmul(weight.transpose()) + bias;
        let mut onehot = vec![0.0; n * self.classes];
        for (r, &label) in labels.iter().enumerate() {
            onehot[r * self.classes + label] = 1.0;
        }
        let y = f64_tensor::<B, 2>(onehot, [n, self.classes], &device);
        (y * log_softmax(logits, 1)).sum_dim(1).reshape([n]).mean().neg()
    }

    /// Convolution (no bias, padding 1 for 3x3) and BatchNorm over each of the `k` consecutive
    /// groups of the batch with the group's statistics (biased variance), then $\gamma$ and
    /// $\beta$.
    fn conv_bn<B: Backend>(&self, theta: &Tensor<B, 1>, x: Tensor<B, 4>, c: &ConvBn, k: usize) -> Tensor<B, 4> {
        let weight = take(theta, c.weight).reshape([c.out_ch, c.in_ch, c.kernel, c.kernel]);
        let pad = c.kernel / 2;
        let z = conv2d(x, weight, None, ConvOptions::new([c.stride; 2], [pad; 2], [1, 1], 1));
        let [n, ch, h, w] = z.dims();
        let z: Tensor<B, 5> = z.reshape([k, n / k, ch, h, w]);
        let mean = z.clone().mean_dim(1).mean_dim(3).mean_dim(4);
        let centred = z - mean;
        let var = centred.clone().powi_scalar(2).mean_dim(1).mean_dim(3).mean_dim(4);
        let normed: Tensor<B, 4> = (centred / (var + BN_EPS).sqrt()).reshape([n, ch, h, w]);
        let gamma = take(theta, c.gamma).reshape([1, c.out_ch, 1, 1]);
        let beta = take(theta, c.beta).reshape([1, c.out_ch, 1, 1]);
        normed * gamma + beta
    }

    /// Every BatchNorm group, in order: the full loss's.
    fn all_groups(&self) -> Vec<usize> {
        (0..self.spec.batch_norm_groups).collect()
    }

    /// The sign ($> 0$) of every activation's input at `theta`, over every image, in a fixed
    /// order: with ReLU, the side of every kink the point lies on. The loss is analytic in
    /// $\theta$ wherever this pattern is constant.
    pub fn activation_pattern(&self, theta: ArrayView1<f64>) -> Vec<bool> {
        let mut signs = Vec::new();
        let device = Default::default();
        let t = f64_tensor::<Cpu, 1>(theta.iter().copied().collect(), [theta.len()], &device);
        let _ = self.loss_tensor(t, &self.all_groups(), |z: &Tensor<Cpu, 4>| {
            let data = z.clone().into_data().convert::<f64>();
            signs.extend(data.iter::<f64>().map(|v| v > 0.0));
        });
        signs
    }

    /// The first kink on the segment $\theta + s\,d$, $0 < s \le s_{\max}$: the smallest $s$
    /// at which [`Self::activation_pattern`] differs from its value at $\theta$, located by
    /// halving $s_{\max}$ until the pattern agrees, then 40 bisections (to $2^{-40}$ of the
    /// bracket). Returns $s_{\max}$ when the pattern at $s_{\max}$ agrees, and 0 when no
    /// halving of $s_{\max}$ (60 tried) does. A kink crossed and crossed back between two of
    /// the points tried is not seen.
    pub fn first_kink_along(&self, theta: ArrayView1<f64>, direction: ArrayView1<f64>, s_max: f64) -> f64 {
        let base = self.activation_pattern(theta);
        let agrees = |s: f64| self.activation_pattern((&theta + &(&direction * s)).view()) == base;
        if agrees(s_max) {
            return s_max;
        }
        let (mut same, mut differs) = (s_max / 2.0, s_max);
        let mut halvings = 1;
        while !agrees(same) {
            if halvings == 60 {
                return 0.0;
            }
            differs = same;
            same /= 2.0;
            halvings += 1;
        }
        for _ in 0..40 {
            let mid = 0.5 * (same + differs);
            if agrees(mid) {
                same = mid;
            } else {
                differs = mid;
            }
        }
        same
    }
}

/// The parameters of `slot` as a 1-D tensor.
fn take<B: Backend>(theta: &Tensor<B, 1>, slot: Slot) -> Tensor<B, 1> {
    theta.clone().slice(slot.offset..slot.offset + slot.len)
}

fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, activation: ResNetActivation) -> Tensor<B, D> {
    match activation {
        ResNetActivation::Relu => relu(x),
        ResNetActivation::Gelu => gelu(x),
        ResNetActivation::Softplus => softplus(x),
    }
}

impl FlatResNet {
    fn loss_and_gradient_on(&self, theta: ArrayView1<f64>, groups: &[usize]) -> (f64, Array1<f64>) {
        reverse_mode(theta, |t| self.loss_tensor(t, groups, |_| {}))
    }

    fn loss_on(&self, theta: ArrayView1<f64>, groups: &[usize]) -> f64 {
        forward(theta, |t| self.loss_tensor(t, groups, |_| {}))
    }
}

impl Objective for FlatResNet {
    fn dim(&self) -> usize {
        self.dim
    }

    fn loss(&self, theta: ArrayView1<f64>) -> f64 {
        self.loss_on(theta, &self.all_groups())
    }

    fn gradient(&self, theta: ArrayView1<f64>) -> Array1<f64> {
        self.loss_and_gradient_on(theta, &self.all_groups()).1
    }

    fn loss_and_gradient(&self, theta: ArrayView1<f64>) -> (f64, Array1<f64>) {
        self.loss_and_gradient_on(theta, &self.all_groups())
    }

    fn hvp(&self, theta: ArrayView1<f64>, v: ArrayView1<f64>) -> Array1<f64> {
        central_difference_along(|p| self.gradient(p), theta, v)
    }
}

/// The "examples" are the BatchNorm groups: a minibatch is a list of group indices.
impl FiniteSum for FlatResNet {
    fn n_examples(&self) -> usize {
        self.spec.batch_norm_groups
    }

    fn batch_loss(&self, theta: ArrayView1<f64>, batch: &[usize]) -> f64 {
        self.loss_on(theta, batch)
    }

    fn batch_gradient(&self, theta: ArrayView1<f64>, batch: &[usize]) -> Array1<f64> {
        self.loss_and_gradient_on(theta, batch).1
    }

    fn batch_hvp(&self, theta: ArrayView1<f64>, batch: &[usize], v: ArrayView1<f64>) -> Array1<f64> {
        central_difference_along(|p| self.batch_gradient(p, batch), theta, v)
    }
}
