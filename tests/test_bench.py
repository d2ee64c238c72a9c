import json

import bench


def test_bench_reports_every_figure(dfmm, tmp_path):
    root, _ = dfmm
    out = tmp_path / "bench.json"
    r = bench.main(["--data_dir", str(root), "--gf_dim", "4", "--df_dim", "4", "--batch_size", "4",
                    "--steps", "2", "--warmup", "1", "--naive_loader", "--stages", "1",
                    "--n_images", "6", "--gen_batch", "4", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(r))
    for key in ("stage1_train", "stage1_train_naive"):
        t = saved[key]
        assert t["images_per_s"] > 0 and t["data_ms_per_step"] > 0 and t["step_ms_per_step"] > 0
        assert 0 < t["data_share"] < 1
    assert saved["stage1_generate_images_per_s"] > 0
    e2e = saved["end_to_end"]
    assert e2e["n_images"] == 6 and e2e["size"] == 256
    assert abs(e2e["total_s"] - (e2e["text_s"] + e2e["generate_s"] + e2e["png_s"])) < 1e-6
