"""fedssl_torch's strict checkpoint loading: a file with a missing, unexpected or
mis-shaped backbone tensor is refused naming it, pretext heads (``head.*``) are ignored,
and a refused load leaves the module untouched. Run: python -m unittest discover python/tests
"""

import os
import tempfile
import unittest

import torch
from safetensors.torch import save_file

import fedssl_torch

MODEL = {"backbone": "resnet", "resnet": {"stem_width": 8, "widths": [8, 16], "blocks": [1, 1], "widen": 1}}


class StrictLoad(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        torch.manual_seed(0)
        self.src = fedssl_torch.build_backbone(MODEL)
        self.tensors = {k: v.clone() for k, v in self.src.state_dict().items()}

    def tearDown(self):
        self.dir.cleanup()

    def save(self, tensors):
        path = os.path.join(self.dir.name, "w.safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        return path

    def test_exact_names_load_and_heads_are_ignored(self):
        t = dict(self.tensors)
        t["head.fc.weight"] = torch.zeros(4, 16)
        dst = fedssl_torch.build_backbone(MODEL)
        fedssl_torch.load_checkpoint(dst, self.save(t))
        for k, v in self.tensors.items():
            self.assertTrue(torch.equal(dst.state_dict()[k], v), k)
        # the names are fedssl's: 5 stem + 10 per block + 5 for stage 1's shortcut
        self.assertEqual(len(self.tensors), 5 + 10 + 10 + 5)
        self.assertIn("stages.1.0.shortcut.conv.weight", self.tensors)
        self.assertNotIn("stem.bn.num_batches_tracked", self.tensors)

    def test_missing_tensor_is_refused_and_module_untouched(self):
        t = dict(self.tensors)
        del t["stages.0.0.bn2.running_var"]
        dst = fedssl_torch.build_backbone(MODEL)
        before = {k: v.clone() for k, v in dst.state_dict().items()}
        with self.assertRaises(ValueError) as e:
            fedssl_torch.load_checkpoint(dst, self.save(t))
        self.assertIn("missing ['stages.0.0.bn2.running_var']", str(e.exception))
        for k, v in before.items():
            self.assertTrue(torch.equal(dst.state_dict()[k], v), k)

    def test_extra_tensor_is_refused(self):
        t = dict(self.tensors)
        t["stages.2.0.conv1.weight"] = torch.zeros(1)
        with self.assertRaises(ValueError) as e:
            fedssl_torch.load_checkpoint(fedssl_torch.build_backbone(MODEL), self.save(t))
        self.assertIn("unexpected ['stages.2.0.conv1.weight']", str(e.exception))

    def test_wrong_shape_is_refused(self):
        t = dict(self.tensors)
        t["stem.conv.weight"] = torch.zeros(8, 3, 5, 5)
        with self.assertRaises(ValueError) as e:
            fedssl_torch.load_checkpoint(fedssl_torch.build_backbone(MODEL), self.save(t))
        self.assertIn("stem.conv.weight: file (8, 3, 5, 5), module (8, 3, 3, 3)", str(e.exception))

    def test_a_truncated_file_is_a_value_error_naming_it(self):
        path = self.save(self.tensors)
        with open(path, "rb") as f:
            head = f.read(40)
        with open(path, "wb") as f:
            f.write(head)
        with self.assertRaises(ValueError) as e:
            fedssl_torch.load_checkpoint(fedssl_torch.build_backbone(MODEL), path)
        self.assertIn(path, str(e.exception))

    def test_unknown_layout_key_is_refused(self):
        with self.assertRaises(ValueError) as e:
            fedssl_torch.build_backbone({"backbone": "resnet", "resnet": {"depth": 3}})
        self.assertIn("model.resnet: unknown keys ['depth']", str(e.exception))

    def test_normalize_known_value(self):
        img = torch.tensor([[[[255, 0, 128]]]], dtype=torch.uint8)
        x = fedssl_torch.normalize(img)
        self.assertEqual(tuple(x.shape), (1, 3, 1, 1))
        self.assertAlmostEqual(x[0, 0, 0, 0].item(), (1.0 - 0.4914) / 0.2470, places=5)
        self.assertAlmostEqual(x[0, 1, 0, 0].item(), (0.0 - 0.4822) / 0.2435, places=5)


if __name__ == "__main__":
    unittest.main()
