"""The seed's equations 4.2.1–4.2.47 and its announced section 4.4, in LaTeX with an English claim.

The seed is a Chinese textbook section ("4.2 Cross-entropy loss"); this table
is what the Derivations page prints for each equation, so a docstring that
cites "Eq. 4.2.x" is readable without the book. ``SECTIONS`` follows the
seed's own subsections. ``CORRECTED`` holds the statement as checked for the
equations where the seed slips (its three slips, each the subject of a
registry check's "seed corrected" note): p̂ - p needs Σp = 1 (4.2.29–4.2.31),
J is positive, not negative, semi-definite (after 4.2.33), and the fused
loss still computes exp(z_j - M) (after 4.2.38).
"""

SECTIONS = [
  ("4.2.1", "Information theory: self-information, entropy, KL divergence", range(1, 7)),
  ("4.2.2", "Cross-entropy and KL divergence", range(7, 11)),
  ("4.2.3", "Cross-entropy for classification", range(11, 19)),
  ("4.2.4", "Gradients of softmax and cross-entropy", range(19, 34)),
  ("4.2.5", "Numerical stability and the LogSumExp trick", range(34, 41)),
  ("4.2.6", "Cross-entropy and maximum likelihood", range(41, 48)),
]

# number: (English claim, LaTeX as the seed writes it)
EQUATIONS = {
  1: (
    "The self-information of an event of probability p(x); base 2 gives bits, e nats, 10 hartleys.",
    r"I(x) = -\log_b p(x) = \log_b \frac{1}{p(x)}",
  ),
  2: (
    "Shannon entropy: the expected surprise of a distribution P over n outcomes.",
    r"H(X) = H(P) = -\sum_{i=1}^n p_i \log p_i = \sum_{i=1}^n p_i \log \frac{1}{p_i}",
  ),
  3: (
    "Entropy is the expectation of self-information under P.",
    r"H(X) = \mathbb{E}_{x \sim P}[I(x)] = \mathbb{E}_{x \sim P}[-\log p(x)]",
  ),
  4: (
    "The Kullback-Leibler divergence of the model Q from the target P (relative entropy).",
    r"D_{KL}(P \parallel Q) = \sum_{i=1}^n p_i \log \frac{p_i}{q_i} = \sum_{i=1}^n p_i (\log p_i - \log q_i)",
  ),
  5: (
    "KL as a difference of two expectations under P.",
    r"D_{KL}(P \parallel Q) = \mathbb{E}_{x \sim P}\Big[\log \frac{p(x)}{q(x)}\Big]"
    r" = \mathbb{E}_{x \sim P}[\log p(x)] - \mathbb{E}_{x \sim P}[\log q(x)]",
  ),
  6: (
    "Gibbs' inequality by Jensen: KL is non-negative, and zero only when P = Q.",
    r"-D_{KL}(P \parallel Q) = \sum_i p_i \log \frac{q_i}{p_i} \le \log \sum_i p_i \frac{q_i}{p_i}"
    r" = \log \sum_i q_i = 0",
  ),
  7: (
    "Cross-entropy is the target's entropy plus the KL divergence.",
    r"H(P, Q) = -\sum_{i=1}^n p_i \log q_i = H(P) + D_{KL}(P \parallel Q)",
  ),
  8: (
    "Fitting a model Q_θ by minimising KL from the target.",
    r"\min_\theta D_{KL}(P \parallel Q_\theta) = \min_\theta \sum_i p_i \log \frac{p_i}{q_\theta(i)}",
  ),
  9: (
    "H(P) does not depend on θ, so minimising KL is minimising cross-entropy.",
    r"\min_\theta \Big(-\sum_i p_i \log q_\theta(i)\Big) = \min_\theta H(P, Q_\theta)",
  ),
  10: (
    "The gradient of cross-entropy with respect to the model's parameters.",
    (
      r"\frac{\partial H(P, Q_\theta)}{\partial \theta} = \frac{\partial}{\partial \theta}\Big(-\sum_i p_i \log"
      r" q_\theta(i)\Big)"
    ),
  ),
  11: (
    "Binary cross-entropy of a predicted probability p̂ against a label y in {0, 1}.",
    r"L_{BCE} = -[y \log \hat p + (1 - y) \log (1 - \hat p)]",
  ),
  12: (
    "The negative log-likelihood of a Bernoulli model over a dataset is the sum of the BCEs.",
    r"\mathcal{L} = -\sum_{n=1}^N [y_n \log \hat p_n + (1 - y_n) \log (1 - \hat p_n)]",
  ),
  13: (
    "Softmax turns logits into a distribution: it sums to 1, keeps the order and ignores a common shift.",
    r"\operatorname{Softmax}(z)_i = \frac{\exp(z_i)}{\sum_{j=1}^C \exp(z_j)} \triangleq \hat p_i",
  ),
  14: (
    "Scaled dot-product attention uses the same softmax, over query-key scores.",
    r"\operatorname{Attention}(Q, K, V)_i = \operatorname{Softmax}\Big(\frac{Q K^T}{\sqrt{d_k}}\Big)_i V",
  ),
  15: (
    "With a one-hot target the cross-entropy is the negative log-probability of the true class.",
    r"H(P, Q) = -\sum_{i=1}^C p_i \log q_i = -p_{c^*} \log q_{c^*} = -\log \hat p_{c^*}",
  ),
  16: (
    "The multi-class loss over N examples is the mean negative log-likelihood.",
    r"L_{CE} = -\frac{1}{N} \sum_{n=1}^N \log \hat p_{n, c_n^*}",
  ),
  17: (
    "The chain from logits through softmax to the loss.",
    r"z_i^{(n)} \xrightarrow{\text{Softmax}} \hat p_i^{(n)} = \frac{\exp(z_i^{(n)})}{\sum_{j=1}^C \exp(z_j^{(n)})}"
    r" \xrightarrow{\text{Cross Entropy}} L_{CE} = -\log \hat p_{c_n^*}^{(n)}",
  ),
  18: (
    "Mean squared error on probabilities, the loss the seed argues against (its gradient vanishes as p̂ saturates).",
    r"L_{MSE} = \frac{1}{N} \sum_{n=1}^N \sum_{i=1}^C (p_i - \hat p_i)^2",
  ),
  19: (
    "Binary cross-entropy of a sigmoid output p̂ = σ(z).",
    r"L = -[y \log \hat p + (1 - y) \log (1 - \hat p)], \qquad \hat p = \sigma(z) = \frac{1}{1 + e^{-z}}",
  ),
  20: (
    "The derivative of BCE with respect to the probability.",
    r"\frac{\partial L}{\partial \hat p} = -\Big(\frac{y}{\hat p} - \frac{1 - y}{1 - \hat p}\Big)",
  ),
  21: (
    "The derivative of the sigmoid.",
    r"\frac{\partial \hat p}{\partial z} = \hat p (1 - \hat p)",
  ),
  22: (
    "By the chain rule, the BCE gradient with respect to the logit is p̂ - y.",
    r"\frac{\partial L}{\partial z} = \frac{\partial L}{\partial \hat p} \cdot \frac{\partial \hat p}{\partial z}"
    r" = -\Big(\frac{y}{\hat p} - \frac{1 - y}{1 - \hat p}\Big) \hat p (1 - \hat p) = \hat p - y",
  ),
  23: (
    "Cross-entropy of a softmax output against a target distribution p.",
    r"L = -\sum_{i=1}^C p_i \log \hat p_i",
  ),
  24: (
    "The chain rule through the softmax: every probability depends on every logit.",
    (
      r"\frac{\partial L}{\partial z_k} = \sum_{i=1}^C \frac{\partial L}{\partial \hat p_i} \cdot \frac{\partial \hat"
      r" p_i}{\partial z_k}"
    ),
  ),
  25: (
    "The derivative of cross-entropy with respect to a predicted probability.",
    r"\frac{\partial L}{\partial \hat p_i} = -\frac{p_i}{\hat p_i}",
  ),
  26: (
    "The entries of the softmax Jacobian.",
    (
      r"\frac{\partial \hat p_i}{\partial z_k} = \begin{cases} \hat p_k (1 - \hat p_k) & i = k \\ -\hat p_k \hat p_i &"
      r" i \ne k \end{cases}"
    ),
  ),
  27: (
    "The diagonal entry, derived from the definition.",
    r"\frac{\partial \hat p_k}{\partial z_k} = \frac{e^{z_k} \sum_j e^{z_j} - e^{z_k} e^{z_k}}{(\sum_j e^{z_j})^2}"
    r" = \hat p_k (1 - \hat p_k)",
  ),
  28: (
    "An off-diagonal entry, derived from the definition.",
    (
      r"\frac{\partial \hat p_i}{\partial z_k} = e^{z_i} \cdot \Big(-\frac{e^{z_k}}{(\sum_j e^{z_j})^2}\Big) = -\hat"
      r" p_i \hat p_k \quad (i \ne k)"
    ),
  ),
  29: (
    "Combining 4.2.25 and 4.2.26: the gradient is p̂ times the target's total mass, minus the target.",
    r"\frac{\partial L}{\partial z_k} = -p_k (1 - \hat p_k) + \sum_{i \ne k} p_i \hat p_k"
    r" = -p_k + \hat p_k \sum_{i=1}^C p_i = \hat p_k - p_k",
  ),
  30: (
    "The softmax cross-entropy gradient for one logit.",
    r"\frac{\partial L}{\partial z_k} = \hat p_k - p_k",
  ),
  31: (
    "The same in vector form.",
    r"\frac{\partial L}{\partial z} = \hat p - p",
  ),
  32: (
    "The softmax Jacobian as a matrix.",
    (
      r"J_{ik} = \frac{\partial \hat p_i}{\partial z_k} = \begin{cases} \hat p_k (1 - \hat p_k) & i = k \\ -\hat p_k"
      r" \hat p_i & i \ne k \end{cases}"
    ),
  ),
  33: (
    "The Jacobian is a diagonal matrix minus a rank-one outer product; its rows sum to 0.",
    r"J = \operatorname{diag}(\hat p) - \hat p \hat p^T",
  ),
  34: (
    "Saturation: one large logit drives its probability to 1 and the others to 0, so the naive log p̂ reaches -inf.",
    r"\hat p_k \approx \frac{\exp(z_k)}{\exp(z_k)} = 1, \qquad \hat p_{j \ne k} \approx 0",
  ),
  35: (
    "The LogSumExp trick: factor out the maximum M = max_i z_i so that no exponential overflows.",
    (
      r"\log \sum_{i=1}^C \exp(z_i) = \log \Big(e^M \sum_{i=1}^C \exp(z_i - M)\Big) = M + \log \sum_{i=1}^C \exp(z_i -"
      r" M)"
    ),
  ),
  36: (
    "The stable softmax, with the maximum subtracted.",
    (
      r"\hat p_i = \frac{\exp(z_i)}{\sum_j \exp(z_j)} = \frac{\exp(z_i - M)}{\sum_j \exp(z_j - M)}, \qquad M = \max_k"
      r" z_k"
    ),
  ),
  37: (
    "The fused loss: no softmax is formed, only the LogSumExp and the true class's logit.",
    (
      r"L = -\log \hat p_{c^*} = -\log \frac{\exp(z_{c^*})}{\sum_j \exp(z_j)} = -\Big(z_{c^*} - \log \sum_j"
      r" \exp(z_j)\Big)"
    ),
  ),
  38: (
    "The fused loss with the LogSumExp trick applied.",
    r"L = -\Big(z_{c^*} - \Big(M + \log \sum_j \exp(z_j - M)\Big)\Big)",
  ),
  39: (
    "The fused loss, rewritten for differentiation.",
    r"L = -z_{c^*} + \log \sum_j \exp(z_j)",
  ),
  40: (
    "Its gradient, derived directly: p̂ minus the one-hot target.",
    r"\frac{\partial L}{\partial z_k} = -\mathbb{1}\{k = c^*\} + \frac{\exp(z_k)}{\sum_j \exp(z_j)} = \hat p_k - p_k",
  ),
  41: (
    "The likelihood of an i.i.d. sample.",
    r"\mathcal{L}(\theta; \mathcal{D}) = \prod_{n=1}^N P(x^{(n)}; \theta)",
  ),
  42: (
    "The log-likelihood turns the product into a sum.",
    r"\ell(\theta; \mathcal{D}) = \log \mathcal{L}(\theta; \mathcal{D}) = \sum_{n=1}^N \log P(x^{(n)}; \theta)",
  ),
  43: (
    "The maximum-likelihood estimate.",
    r"\hat\theta_{MLE} = \arg\max_\theta \ell(\theta; \mathcal{D})",
  ),
  44: (
    "The likelihood of a classifier's labels.",
    (
      r"\mathcal{L}(\theta; \mathcal{D}) = \prod_{n=1}^N P(y^{(n)} \mid x^{(n)}; \theta) = \prod_{n=1}^N \hat"
      r" p_{y^{(n)}}^{(n)}"
    ),
  ),
  45: (
    "Its log-likelihood.",
    r"\ell(\theta; \mathcal{D}) = \sum_{n=1}^N \log \hat p_{y^{(n)}}^{(n)}",
  ),
  46: (
    "Minimising the negative log-likelihood is minimising the summed cross-entropy.",
    (
      r"\min_\theta \Big(-\sum_{n=1}^N \log \hat p_{y^{(n)}}^{(n)}\Big) = \min_\theta \sum_{n=1}^N \big(-\log \hat"
      r" p_{y^{(n)}}^{(n)}\big)"
    ),
  ),
  47: (
    "The empirical risk is the mean per-example cross-entropy.",
    (
      r"R_{emp}(\theta) = \frac{1}{N} \sum_{n=1}^N L(y^{(n)}, \hat y^{(n)}; \theta), \qquad L(y, \hat y; \theta) ="
      r" -\log \hat p_y^{(n)}"
    ),
  ),
}

INFONCE = (
  "The seed announces (section 4.4) that InfoNCE is the softmax cross-entropy over similarity scores,"
  " with the positive's index as the label, and that attention weights are the same softmax.",
  r"L_{\text{InfoNCE}} = -\log \frac{\exp(s(q, k^+) / \tau)}{\sum_j \exp(s(q, k_j) / \tau)},"
  r" \qquad \tau = \sqrt{d_k},\ s(q, k) = q^T k:"
  r"\ L = -\log \operatorname{Softmax}\Big(\frac{q K^T}{\sqrt{d_k}}\Big)_{k^+}",
)

# number: the statement as checked, where the seed's is wrong or too narrow (see the module docstring).
CORRECTED = {
  29: (
    r"\frac{\partial L}{\partial z_k} = \hat p_k \sum_{i=1}^C p_i - p_k"
    r" \quad (= \hat p_k - p_k \text{ only when } \textstyle\sum_i p_i = 1)"
  ),
  30: r"\frac{\partial L}{\partial z_k} = \hat p_k \sum_i p_i - p_k",
  31: r"\frac{\partial L}{\partial z} = \hat p \sum_i p_i - p",
  33: r"J = \operatorname{diag}(\hat p) - \hat p \hat p^T \succeq 0, \qquad J \mathbf{1} = 0",
  38: (
    r"L = \log \sum_j \exp(z_j - M) + M - z_{c^*}:"
    r" \text{ computes } \exp(z_j - M) \le 1, \text{ never an unshifted } \exp(z_j)"
  ),
}
