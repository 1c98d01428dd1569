"""CDS: a cluster's ``outlier_detection`` converts to the file's keys (Envoy's defaults are
ours, so what is unset stays unset); what trio-mesh cannot honour is refused by its Envoy
path, what it does not enforce warns."""

from __future__ import annotations

import datetime

import pytest

from trio_mesh.config.load import parse_config
from trio_mesh.config.outlier import OutlierDetection
from trio_mesh.xds import types as t
from trio_mesh.xds.envoy_import import envoy_import
from trio_mesh.xds.translate import ConvertError, cluster_doc

with envoy_import():
    from envoy_data_plane.envoy.config.core.v3 import TypedExtensionConfig

ms = lambda n: datetime.timedelta(milliseconds=n)  # noqa: E731


def with_outlier(**kw: object) -> t.Cluster:
    return t.Cluster(
        name="be",
        load_assignment=t.ClusterLoadAssignment(
            cluster_name="be",
            endpoints=[
                t.LocalityLbEndpoints(
                    lb_endpoints=[
                        t.LbEndpoint(
                            endpoint=t.Endpoint(
                                address=t.Address(
                                    socket_address=t.SocketAddress(
                                        address="127.0.0.1", port_value=8080
                                    )
                                )
                            )
                        )
                    ]
                )
            ],
        ),
        outlier_detection=t.OutlierDetection(**kw),  # type: ignore[arg-type]
    )


def loaded(c: t.Cluster) -> OutlierDetection | None:
    doc, _ = cluster_doc(c)
    result = parse_config({"cluster_manager": {"clusters": [doc]}}, dynamic=True)
    assert result.warnings == ()
    return result.config.cluster_manager.clusters[0].outlier_detection


def test_empty_outlier_detection_is_envoys_defaults() -> None:
    assert cluster_doc(with_outlier())[0]["outlier_detection"] == {}
    assert loaded(with_outlier()) == OutlierDetection()


def test_every_enforced_field_converts() -> None:
    od = loaded(
        with_outlier(
            consecutive_5xx=3,
            consecutive_gateway_failure=4,
            consecutive_local_origin_failure=2,
            split_external_local_origin_errors=True,
            interval=ms(50),
            base_ejection_time=ms(200),
            max_ejection_time=ms(1000),
            max_ejection_percent=50,
            enforcing_consecutive_5xx=90,
            enforcing_consecutive_gateway_failure=100,
            enforcing_consecutive_local_origin_failure=80,
            always_eject_one_host=True,
        )
    )
    assert od == OutlierDetection(
        consecutive_5xx=3,
        consecutive_gateway_failure=4,
        consecutive_local_origin_failure=2,
        split_external_local_origin_errors=True,
        interval=0.05,
        base_ejection_time=0.2,
        max_ejection_time=1.0,
        max_ejection_percent=50,
        enforcing_consecutive_5xx=90,
        enforcing_consecutive_gateway_failure=100,
        enforcing_consecutive_local_origin_failure=80,
    )


def test_success_rate_loads_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="trio_mesh.xds"):
        od = loaded(with_outlier(success_rate_stdev_factor=1900, enforcing_success_rate=100))
    assert od == OutlierDetection()
    assert "Cluster 'be': outlier_detection.success_rate_stdev_factor: not enforced" in caplog.text
    assert "outlier_detection.enforcing_success_rate: not enforced" in caplog.text


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"max_ejection_percent": 150},
            "Cluster 'be': outlier_detection.max_ejection_percent: expected a percentage"
            " 0..100, got 150",
        ),
        (
            {"interval": ms(0)},
            "Cluster 'be': outlier_detection.interval: expected a positive duration, got 0.0s",
        ),
        (
            {"monitors": [TypedExtensionConfig(name="m")]},
            "Cluster 'be': outlier_detection.monitors: not supported by trio-mesh",
        ),
    ],
)
def test_refusals_name_the_envoy_field(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConvertError) as info:
        cluster_doc(with_outlier(**kw))
    assert str(info.value) == message
