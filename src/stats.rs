//! Small statistics used by the measurements: ordinary least squares of a line with standard
//! errors and Student-t confidence intervals, and the mean with its standard error.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// The least-squares line $y = a + b x$ with standard errors.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LinearFit {
    /// Slope $b$.
    pub slope: f64,
    /// Intercept $a$.
    pub intercept: f64,
    /// Standard error of the slope, $s/\sqrt{S_{xx}}$ with $s^2$ the residual variance on
    /// $n-2$ degrees of freedom (0 for exactly two points).
    pub slope_stderr: f64,
    /// Standard error of the intercept, $s\sqrt{1/n + \bar x^2/S_{xx}}$.
    pub intercept_stderr: f64,
    /// Number of points.
    pub points: usize,
}

impl LinearFit {
    /// Half-width of the two-sided 95% Student-t confidence interval of the slope.
    pub fn slope_ci95(&self) -> f64 {
        t_quantile_975(self.points.saturating_sub(2)) * self.slope_stderr
    }

    /// Half-width of the two-sided 95% Student-t confidence interval of the intercept.
    pub fn intercept_ci95(&self) -> f64 {
        t_quantile_975(self.points.saturating_sub(2)) * self.intercept_stderr
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (infinite for `df = 0`).
pub fn t_quantile_975(df: usize) -> f64 {
    if df == 0 {
        return f64::INFINITY;
    }
    StudentsT::new(0.0, 1.0, df as f64).map(|t| t.inverse_cdf(0.975)).unwrap_or(f64::INFINITY)
}

/// Least squares of `y` on `x`; `None` with fewer than two points or constant `x`.
pub fn linear_fit(x: &[f64], y: &[f64]) -> Option<LinearFit> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mx = x[..n].iter().sum::<f64>() / nf;
    let my = y[..n].iter().sum::<f64>() / nf;
    let sxx: f64 = x[..n].iter().map(|v| (v - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = x[..n].iter().zip(&y[..n]).map(|(a, b)| (a - mx) * (b - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ssr: f64 = x[..n].iter().zip(&y[..n]).map(|(a, b)| (b - intercept - slope * a).powi(2)).sum();
    let s2 = if n > 2 { ssr / (nf - 2.0) } else { 0.0 };
    Some(LinearFit {
        slope,
        intercept,
        slope_stderr: (s2 / sxx).sqrt(),
        intercept_stderr: (s2 * (1.0 / nf + mx * mx / sxx)).sqrt(),
        points: n,
    })
}

/// Least squares of $\log y$ on $\log x$ over the points with positive, finite $x$ and $y$:
/// the fitted slope is the order of a power law $y \propto x^p$.
pub fn log_log_fit(x: &[f64], y: &[f64]) -> Option<LinearFit> {
    let (lx, ly): (Vec<f64>, Vec<f64>) = x
        .iter()
        .zip(y)
        .filter(|(a, b)| **a > 0.0 && **b > 0.0 && a.is_finite() && b.is_finite())
        .map(|(a, b)| (a.ln(), b.ln()))
        .unzip();
    linear_fit(&lx, &ly)
}

/// Mean and standard error of the mean ($s/\sqrt n$, 0 for one value).
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_line_has_zero_errors() {
        let f = linear_fit(&[0.0, 1.0, 2.0, 3.0], &[1.0, 3.0, 5.0, 7.0]).unwrap();
        assert!((f.slope - 2.0).abs() < 1e-15 && (f.intercept - 1.0).abs() < 1e-15);
        assert!(f.slope_stderr < 1e-15 && f.intercept_stderr < 1e-15);
        assert!(linear_fit(&[1.0, 1.0], &[0.0, 1.0]).is_none());
    }

    #[test]
    fn standard_errors_match_a_textbook_case() {
        // x = 1..5, y = (1, 2, 1.3, 3.75, 2.25): Sxx = 10, Sxy = 4.25, slope 0.425,
        // intercept 0.785; residuals -0.21, 0.365, -0.76, 1.265, -0.66, SSR = 2.79075.
        let f = linear_fit(&[1.0, 2.0, 3.0, 4.0, 5.0], &[1.0, 2.0, 1.3, 3.75, 2.25]).unwrap();
        assert!((f.slope - 0.425).abs() < 1e-12);
        assert!((f.intercept - 0.785).abs() < 1e-12);
        let s2: f64 = 2.79075 / 3.0;
        assert!((f.slope_stderr - (s2 / 10.0).sqrt()).abs() < 1e-12);
        assert!((t_quantile_975(3) - 3.182_446_305).abs() < 1e-6);
    }
}
