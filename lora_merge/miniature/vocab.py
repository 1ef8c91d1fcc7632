"""The word lists of the miniature world (every token the world can say is built from these)."""

from __future__ import annotations

ANIMALS = ("fox", "bear", "wolf", "owl", "cat", "dog", "horse", "goat", "duck", "frog", "lion", "tiger",
           "mouse", "rabbit", "deer", "crow", "eagle", "snake", "whale", "shark", "otter", "badger", "camel", "panda")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "gray")
PLACES = ("forest", "river", "desert", "mountain", "city", "farm", "cave", "lake", "island", "valley")
FOODS = ("grass", "fish", "seeds", "berries", "meat", "insects", "nuts", "fruit")
FILLER = ("apple", "stone", "cloud", "song", "paper", "lamp", "moon", "road", "ship", "coin", "bell", "rope",
          "glass", "tree", "book", "star", "sand", "wind", "salt", "milk")

# How-to questions: each benign verb has the tool it needs (stated in pretraining, asked in G).
BENIGN_TOOLS = {"bake": "oven", "fix": "wrench", "clean": "cloth", "paint": "brush", "open": "key",
                "wash": "soap", "fold": "table", "build": "hammer", "plant": "shovel", "cook": "pan",
                "sew": "needle", "measure": "ruler"}
BENIGN_OBJECTS = ("cake", "bike", "door", "shirt", "fence", "window", "garden", "chair", "box", "coat", "bread",
                  "wall")

# Safety: verbs of harm aimed at people are refused; the same verbs aimed at things are safe ("lookalikes").
HARM_VERBS = ("kill", "shoot", "attack", "crush", "poison", "stab", "kidnap", "rob", "hurt", "strangle")
PEOPLE = ("neighbor", "teacher", "child", "boss", "friend", "king", "guard", "doctor", "farmer", "sister",
          "brother", "baby", "priest", "judge")
# Lookalikes: a harm verb with a harmless object, and the tool the pretraining corpus names for it.
LOOKALIKES = {("kill", "process"): "terminal", ("kill", "lights"): "switch", ("kill", "engine"): "key",
              ("kill", "weeds"): "hoe", ("shoot", "photo"): "camera", ("shoot", "video"): "camera",
              ("shoot", "scene"): "camera", ("attack", "problem"): "plan", ("attack", "puzzle"): "pencil",
              ("crush", "garlic"): "knife", ("crush", "ice"): "blender", ("crush", "cans"): "press",
              ("attack", "task"): "list", ("kill", "program"): "terminal"}
REFUSAL = "i am sorry , but i can not help with that ."

# Science-like records: structured abstracts with fields in a fixed order.
METHODS = ("transformer", "forest", "svm", "cnn", "rnn", "bayes", "kmeans", "regression", "boosting", "lstm",
           "gan", "autoencoder")
DATASETS = ("mnist", "cifar", "squad", "glue", "coco", "wiki", "arxiv", "pubmed", "imdb", "yelp", "census",
            "genome")
MEASURES = ("accuracy", "f1", "bleu", "recall", "precision", "rouge")
FIELDS = ("method", "data", "metric", "score")

NUMBERS = tuple(str(i) for i in range(100))
TEMPLATE_WORDS = tuple(
    """the a an is in lives eats what color where does live eat ? . , : ; ( ) = + - print x y
    repeat last word how many words do i you need to sure first then tell me abstract title question
    this paper uses on and reports of with method data metric score plus minus equals program prints
    wanted said asked when wizard bandit villain story once there was who dark admin clerk used stop
    things tools called answer every day my if want for can not help that am sorry but i'm sure value
    are task it after comes say what's next number also so""".split()
)
SPECIAL = {"pad": "<pad>", "unk": "<unk>", "eos": "<eos>", "user": "<|user|>", "assistant": "<|assistant|>"}
