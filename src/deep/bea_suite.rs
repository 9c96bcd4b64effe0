//! The burn networks of the backward-error suite (`fullbatch bea --network`), built as
//! [`SuiteModel`]s so that [`crate::bea::run_suite`] runs on them unchanged.

use super::flat_resnet::{FlatResNet, FlatResNetSpec, ResNetActivation};
use super::mlp::BurnMlp;
use crate::bea::{SuiteModel, SuiteNetwork, SuiteObjective};
use crate::data::cifar;
use crate::models::{Model, ModelKind};
use crate::{Choice, Result};

/// The network `kind` of the backward-error suite, with data and start point drawn from `seed`
/// (the burn MLP starts where the toy model does).
///
/// # Errors
/// Only if a generator rejects its (fixed, valid) sizes, which would be a bug.
pub fn suite_network(kind: SuiteNetwork, seed: u64) -> Result<SuiteModel> {
    let resnet = |activation| -> Result<SuiteModel> {
        let data = cifar::synthetic(8, 3, 8, 4, 20.0, seed)?;
        let spec = FlatResNetSpec { width: 4, blocks: vec![1, 1], activation, batch_norm_groups: 4 };
        let net = FlatResNet::new(spec, &data)?;
        let theta0 = net.initial_parameters(seed);
        Ok(SuiteModel { name: kind.name().into(), objective: SuiteObjective::FiniteSum(Box::new(net)), theta0 })
    };
    match kind {
        SuiteNetwork::BurnMlpTanhMse => {
            let instance = ModelKind::MlpTanhMse.instance(seed)?;
            let Model::Network(net) = &instance.model else {
                unreachable!("mlp-tanh-mse is a network");
            };
            let mlp = BurnMlp::from_network(net);
            Ok(SuiteModel {
                name: kind.name().into(),
                objective: SuiteObjective::FiniteSum(Box::new(mlp)),
                theta0: instance.theta0,
            })
        }
        SuiteNetwork::ResnetGelu => resnet(ResNetActivation::Gelu),
        SuiteNetwork::ResnetSoftplus => resnet(ResNetActivation::Softplus),
    }
}
